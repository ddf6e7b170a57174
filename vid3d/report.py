"""PROJECT/report.html: one self-contained page (plots, pictures and the video inlined, nothing
fetched) with a section per stage that has run, refreshed after every command and by `vid3d report`.
A refresh keeps the sections of stages that did not change since the last page (each section
carries a hash of its stage's manifest record and vid3d's version), so only what a command ran is
redrawn.

Everything is read through the stages' readers and the manifest; a section that cannot be drawn
says why instead of failing the page, and `refresh_report` never fails a command.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vid3d import __version__
from vid3d.project import MANIFEST, STAGES, Project, atomic_write_text
from vid3d.ui import log

# The sections import numpy and report_plots (matplotlib, torch) when they draw: a cached rerun only
# compares the page's date with the manifest's, and importing matplotlib took 1.2 s of its 3.4 s (issue 24).
if TYPE_CHECKING:
    import numpy as np

REPORT_FILE = "report.html"
FILMSTRIP_FRAMES = 12
INLINE_VIDEO_LIMIT = 8 * 2**20  # bytes: a larger video is linked (beside the report) instead of inlined
RAN = ("complete", "stale", "failed", "incomplete")  # statuses whose stage folder may hold results


def refresh_report(project_dir: Path) -> None:
    """Write report.html unless it is newer than the manifest (no stage changed since); any failure
    is logged, never raised (the report must not fail a stage)."""
    report, manifest = Path(project_dir) / REPORT_FILE, Path(project_dir) / MANIFEST
    try:
        if report.is_file() and manifest.is_file() and report.stat().st_mtime_ns > manifest.stat().st_mtime_ns:
            return
        write_report(project_dir, reuse=True)
    except Exception as exc:  # noqa: BLE001 - the stages' results matter more than their report
        log.warning(
            "report: %s not refreshed (%s: %s); `vid3d report %s` retries",
            Path(project_dir) / REPORT_FILE,
            type(exc).__name__,
            exc,
            project_dir,
        )
        log.debug("report failed", exc_info=True)


def write_report(project_dir: Path, reuse: bool = False) -> Path:
    """Build the page from the project as it is now and write it atomically; with `reuse`, the
    sections of stages unchanged since the page already there are taken from it."""
    project = Project(project_dir)
    path = project.root / REPORT_FILE
    previous = path.read_text(errors="replace") if reuse and path.is_file() else ""
    atomic_write_text(path, build_page(project, previous))
    return path


SECTION = re.compile(
    r'<section id="\w+" data-key="([^"]*)">.*?</section>', re.DOTALL
)  # bodies are escaped: no </section>


def build_page(project: Project, previous: str = "") -> str:
    status = project.status()
    drawn = {match[1]: match[0] for match in SECTION.finditer(previous)}
    sections = [_overview(project, status)]
    for stage in STAGES:
        if status[stage]["status"] in RAN:
            key = _section_key(stage, status[stage])
            sections.append(drawn.get(key) or _section(project, stage, status[stage], key))
    sections.append(_settings(project))
    title = f"vid3d report: {html.escape(project.root.resolve().name)}"
    return PAGE.format(title=title, body="\n".join(sections))


def _section_key(stage: str, record: dict) -> str:
    """What a stage's section is drawn from: the stage's record (status, fingerprint, finish time,
    metrics, error) and the version of vid3d that draws it."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{__version__}:{stage}:{digest}"


def _section(project: Project, stage: str, record: dict, key: str) -> str:
    """A stage's section; when drawing it fails, a note that says why (the page still opens)."""
    note = (
        ""
        if record["status"] == "complete"
        else (
            f'<p class="warn">{record["status"]}: {html.escape(record.get("error", "the files shown are from an earlier run"))}</p>'
        )
    )
    try:
        body = SECTIONS[stage](project, record)
    except Exception as exc:  # noqa: BLE001
        log.debug("report: the %s section failed", stage, exc_info=True)
        body = f'<p class="warn">could not be shown: {html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>'
    return f'<section id="{stage}" data-key="{key}"><h2>{stage}</h2>{note}{body}</section>'


def _overview(project: Project, status: dict) -> str:
    rows = [[stage, record["status"], _seconds(record), record.get("finished", "")] for stage, record in status.items()]
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"<header><h1>{html.escape(str(project.root.resolve()))}</h1>"
        f"<p>vid3d {__version__}, written {written}. <code>vid3d view {html.escape(str(project.root))}</code> "
        f"shows the results in 3D.</p>{_table(['stage', 'status', 'seconds', 'finished'], rows)}</header>"
    )


def _seconds(record: dict) -> str:
    total = record.get("timings", {}).get("total")
    return "" if total is None else f"{total:.1f}"


# -- the stages' sections --------------------------------------------------------------------------
def _generate(project: Project, record: dict) -> str:
    import numpy as np

    from vid3d.generate.output import VIDEO_FILE, GeneratedVideo
    from vid3d.report_plots import camera_path_figure

    generated = GeneratedVideo.read(project.stage_dir("generate"))
    parts = [
        _metrics(record),
        _filmstrip(generated.frame_paths()),
        _video(project, generated.frames_dir.parent / VIDEO_FILE),
    ]
    if generated.cameras_file is not None:
        matrices = np.array([camera.cam_to_world for camera in generated.cameras()])
        parts.append(_figure(camera_path_figure(matrices, None), "the generated orbit's cameras (top and side view)"))
    return "".join(parts)


def _frames(project: Project, record: dict) -> str:
    from vid3d.ingest import FramesIndex
    from vid3d.report_plots import sharpness_figure

    index = FramesIndex.read(project.stage_dir("frames"))
    parts = [_metrics(record), _filmstrip(index.paths())]
    sharpness = [entry.sharpness for entry in index.frames]
    if any(sharpness):
        parts.append(_figure(sharpness_figure(sharpness), "sharpness of each kept frame (variance of the Laplacian)"))
    return "".join(parts)


def _poses(project: Project, record: dict) -> str:
    from vid3d.poses import read_dataset
    from vid3d.report_plots import camera_path_figure

    poses = read_dataset(project.stage_dir("poses"))
    points = poses.points()
    caption = f"{len(poses.names)} cameras and {len(points[0])} sparse points (top and side view)"
    return _metrics(record) + _figure(camera_path_figure(poses.cam_to_world, points), caption)


def _splats(project: Project, record: dict) -> str:
    import numpy as np

    from vid3d.report_plots import curves_figure
    from vid3d.splats.results import read_held_out_renders, read_history

    splats_dir = project.stage_dir("splats")
    history = read_history(splats_dir)
    parts = [_metrics(record)]
    if history is not None and len(history["step"]):
        held_out = record.get("metrics", {}).get("psnr")
        parts.append(
            _figure(curves_figure(history, held_out), "training loss, PSNR and Gaussian count against the step")
        )
    renders = read_held_out_renders(splats_dir)
    if renders:
        parts.append("<h3>held-out frames: render | original</h3><div class='grid'>")
        parts += [
            _picture(np.concatenate([r.render, r.original], axis=1), f"{r.name}: {r.psnr:.2f} dB") for r in renders
        ]
        parts.append("</div>")
    return "".join(parts)


def _export(project: Project, record: dict) -> str:

    from vid3d.export import mesh_path, read_mesh
    from vid3d.poses import read_dataset
    from vid3d.report_plots import mesh_figure

    parts = [_metrics(record)]
    mesh_file = mesh_path(project.stage_dir("export"))
    if mesh_file is not None:
        mesh = read_mesh(mesh_file)
        cameras = read_dataset(project.stage_dir("poses")).cam_to_world
        parts.append(
            _figure(
                mesh_figure(mesh, cameras),
                f"{mesh_file.name}: {len(mesh.faces):,} faces, {len(mesh.vertices):,} vertices",
            )
        )
    return "".join(parts) + _asset_table(project, record)


def _asset_table(project: Project, record: dict) -> str:
    """One row per exported asset: its files, their total size and what its writer measured."""
    assets = record.get("assets") or {}
    if not assets:  # a record from before assets were kept apart
        return _table(["file", "size"], [[name, _size(project.root / name)] for name in record.get("outputs", [])])
    export_dir = project.stage_dir("export")
    rows = [
        [
            html.escape(name),
            "<br>".join(html.escape(file) for file in entry["files"]),
            _size(*(export_dir / file for file in entry["files"])),
            html.escape(_measures(entry["metrics"])),
        ]
        for name, entry in assets.items()
    ]
    return _table(["asset", "files", "size", "measures"], rows)


SECTIONS: dict[str, Callable[[Project, dict], str]] = {
    "generate": _generate,
    "frames": _frames,
    "poses": _poses,
    "splats": _splats,
    "export": _export,
}


def _settings(project: Project) -> str:
    settings, _ = project.saved_settings()
    blocks = []
    for stage in STAGES:
        if stage in settings:
            rows = [[key, html.escape(str(value))] for key, value in settings[stage].items()]
            blocks.append(f"<details><summary>{stage}</summary>{_table(['setting', 'value'], rows)}</details>")
    return "<section id='settings'><h2>settings of each stage's last run</h2>" + "".join(blocks) + "</section>"


# -- HTML pieces -------------------------------------------------------------------------------
def _metrics(record: dict) -> str:
    metrics = record.get("metrics") or {}
    timings = {f"seconds ({name})": value for name, value in (record.get("timings") or {}).items()}
    rows = [[key.replace("_", " "), html.escape(str(value))] for key, value in {**metrics, **timings}.items()]
    return _table(["measure", "value"], rows) if rows else ""


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(png: bytes, caption: str) -> str:
    return (
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{_b64(png)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _picture(image: np.ndarray, caption: str, side: int = 384) -> str:
    from vid3d.report_plots import thumbnail_jpeg

    return (
        f"<figure><img alt='{html.escape(caption)}' src='data:image/jpeg;base64,{_b64(thumbnail_jpeg(image, side))}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _filmstrip(paths: list[Path]) -> str:
    import imageio.v3 as iio
    import numpy as np

    from vid3d.report_plots import thumbnail_jpeg

    if not paths:
        return ""
    chosen = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(FILMSTRIP_FRAMES, len(paths)))]
    images = "".join(
        f"<img alt='{p.name}' title='{p.name}' src='data:image/jpeg;base64,"
        f"{_b64(thumbnail_jpeg(iio.imread(p)[..., :3], 160))}'>"
        for p in chosen
    )
    return f"<div class='strip'>{images}</div><p class='small'>{len(chosen)} of {len(paths)} frames</p>"


def _video(project: Project, video: Path) -> str:
    if not video.is_file():
        return ""
    if video.stat().st_size > INLINE_VIDEO_LIMIT:
        source = html.escape(os.path.relpath(video, project.root))
    else:
        source = "data:video/mp4;base64," + _b64(video.read_bytes())
    return f"<video controls loop muted src='{source}'></video>"


def _size(*paths: Path) -> str:
    """The size of files and folders together; "missing" when one is."""
    if not all(path.exists() for path in paths):
        return "missing"
    size = sum(
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        for path in paths
    )
    return f"{size / 2**20:.2f} MB" if size >= 2**20 else f"{size / 2**10:.1f} KB"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.3em; word-break: break-all; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }} td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} figure img {{ max-width: 100%; }}
figcaption, .small {{ font-size: 0.85em; color: #555; }} .warn {{ color: #a40; }}
.strip {{ display: flex; gap: 3px; overflow-x: auto; }} .strip img {{ height: 96px; }}
.grid {{ display: flex; flex-wrap: wrap; }} video {{ max-width: 384px; display: block; margin: 0.5em 0; }}
</style></head><body>
{body}
</body></html>
"""


def _measures(metrics: dict) -> str:
    """{"mesh_faces": 200000} -> "mesh faces 200,000"."""
    return ", ".join(
        f"{key.replace('_', ' ')} {value:,}" if isinstance(value, int | float) else f"{key.replace('_', ' ')} {value}"
        for key, value in metrics.items()
    )
