"""The exported mesh against the true surface: the old export (no crop, every face, voxels of the
cameras' extent / 256) against today's defaults, on projects whose scene is known.

    .venv/bin/python benchmarks/mesh.py [demo=PROJECT] [phone=PROJECT] [--set export.key=value ...] [--reuse-old]

`demo=`: a `vid3d demo` project (the bundled orbit, examples/orbit.json says its scene);
`phone=`: benchmarks/phone.py's photos project (procedural scene 3, its handheld walk). Defaults:
vid3d-demo and runs/phone/projects/photos. Each project is copied (never written) and its mesh
re-exported once per variant; `--set` goes to the "new" variant only. The copy's project.toml loses
its [export] table, so "new" is vid3d's defaults, not the settings the project was last exported with.
--reuse-old measures the project's own mesh as "old" when it was exported with the old settings
(faces 0, no bbox, voxel_size 0) instead of exporting it again (on a shared 2-core machine the
old export takes minutes).

Printed per project and variant: faces, file MB, export seconds (the export stage's own timing)
and CPU seconds (the whole `vid3d export` process, user and system),
precision over ALL the mesh's surface (samples within 1% of the diagonal of the true surface,
uncropped: background sheets count against it), and Chamfer distance (% of the diagonal) and
F-score at 1% with both meshes cropped to the region round the objects (as `vid3d demo`'s summary).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tomli_w

from vid3d.config import read_toml
from vid3d.export import mesh_path, read_mesh
from vid3d.ingest import FramesIndex
from vid3d.metrics.mesh import compare_to_truth
from vid3d.metrics.scene3d import scene_region  # the region `vid3d demo`'s summary crops to
from vid3d.poses import read_dataset
from vid3d.project import SETTINGS_FILE, Project
from vid3d.scenes import Scene, make_scene, orbit_cameras
from vid3d.scenes.phone import handheld_path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "orbit.json"
PHONE_SEED, PHONE_PHOTOS, PHONE_WALK_SECONDS = 3, 50, 20.0  # benchmarks/phone.py's photos
DEFAULT_PROJECTS = {"demo": Path("vid3d-demo"), "phone": Path("runs/phone/projects/photos")}
OLD_VOXELS_PER_SCENE = 256  # the old export's TSDF: the cameras' extent over this many voxels


def demo_truth(project: Project) -> tuple[Scene, np.ndarray]:
    """The bundled orbit's scene and the true camera-to-world of each registered frame."""
    truth = json.loads(EXAMPLE.read_text())
    cameras = orbit_cameras(truth["frames"], width=truth["width"], height=truth["height"])
    index = {e.file: e.source_index for e in FramesIndex.read(project.stage_dir("frames")).frames}
    names = read_dataset(project.stage_dir("poses")).names
    return make_scene(truth["scene_seed"]), cameras.cam_to_world[[index[name] for name in names]]


def phone_truth(project: Project) -> tuple[Scene, np.ndarray]:
    """benchmarks/phone.py's scene and walk; photo IMG_0007.jpg is the walk's 7th camera."""
    cameras = handheld_path(PHONE_PHOTOS, PHONE_SEED, walk_seconds=PHONE_WALK_SECONDS)
    index = {e.file: int(e.source[4:8]) - 1 for e in FramesIndex.read(project.stage_dir("frames")).frames}
    names = read_dataset(project.stage_dir("poses")).names
    return make_scene(PHONE_SEED), cameras.cam_to_world[[index[name] for name in names]]


TRUTHS = {"demo": demo_truth, "phone": phone_truth}


def old_settings(project: Project) -> list[str]:
    """The export as it was before the crop and the face budget: everything, at the old voxel size."""
    centres = read_dataset(project.stage_dir("poses")).cam_to_world[:, :3, 3]
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=1).max())  # as Dataset.scene_scale
    return ["export.bbox=none", "export.faces=0", f"export.voxel_size={scene_scale / OLD_VOXELS_PER_SCENE:.6g}"]


def exported_old_style(project: Project) -> bool:
    """Whether the project's mesh was made with the old export's settings (by then its defaults)."""
    asset = project.manifest()["stages"].get("export", {}).get("assets", {}).get("mesh", {})
    settings = asset.get("settings", {})
    old = settings.get("faces") == 0 and settings.get("voxel_size") == 0 and settings.get("bbox") in ("", "none")
    return old and mesh_path(project.stage_dir("export")) is not None


def copy_project(source: Path, into: Path) -> Project:
    """What export reads (frames, poses, splats, the manifest), without [export] in project.toml."""
    target = into / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("export", "generated", "logs", "report.html"))
    settings = read_toml(target / SETTINGS_FILE).values
    settings.pop("export", None)
    (target / SETTINGS_FILE).write_text(tomli_w.dumps(settings))
    return Project(target)


def export(project: Project, sets: list[str]) -> float:
    """Re-export the mesh; the CPU seconds it took (user and system: on a shared machine the wall
    clock mostly measures the other jobs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "vid3d", "export", str(project.root), "--mesh", "--force"]
    result = subprocess.run(
        [*command, *[arg for s in sets for arg in ("--set", s)]], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(
            f"{project.root}: export {' '.join(sets)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def measure(project: Project, scene: Scene, true_cam_to_world: np.ndarray) -> dict:
    path = mesh_path(project.stage_dir("export"))
    timings = project.manifest()["stages"]["export"]["timings"]
    mesh = read_mesh(path)
    accuracy = compare_to_truth(
        mesh,
        read_dataset(project.stage_dir("poses")).cam_to_world,
        true_cam_to_world,
        scene.mesh(),
        scene_region(scene),
    )
    return {
        "faces": len(mesh.faces),
        "mb": round(path.stat().st_size / 1e6, 1),
        "export_s": round(timings.get("mesh", timings["total"]), 1),
        "precision_at_1pct": round(accuracy["precision_all"], 4),
        "chamfer_pct_of_diagonal": round(100 * accuracy["chamfer_fraction"], 3),
        "fscore_at_1pct": round(accuracy["fscore_1pct"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("projects", nargs="*", help="KIND=PROJECT, KIND one of demo, phone")
    parser.add_argument("--set", action="append", default=[], help="a setting for the new export, as vid3d's --set")
    parser.add_argument(
        "--reuse-old", action="store_true", help="measure the project's own mesh as old when exported so"
    )
    args = parser.parse_args()
    projects = dict(p.split("=", 1) for p in args.projects) if args.projects else DEFAULT_PROJECTS
    if unknown := set(projects) - set(TRUTHS):
        raise SystemExit(f"unknown project kind {', '.join(sorted(unknown))}: use demo=PROJECT or phone=PROJECT")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vid3d-mesh-benchmark-") as scratch:
        for kind, source in projects.items():
            original, project = Project(Path(source)), copy_project(Path(source), Path(scratch))
            scene, true_cam_to_world = TRUTHS[kind](project)
            for variant, sets in (("old", old_settings(project)), ("new", args.set)):
                measured, cpu_s = project, None
                if variant == "old" and args.reuse_old and exported_old_style(original):
                    measured, variant = original, "old (its own export)"  # read, never written
                else:
                    cpu_s = round(export(project, sets), 1)
                row = {"project": kind, "variant": variant, **measure(measured, scene, true_cam_to_world)}
                rows.append({**row, "export_cpu_s": cpu_s})
                print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(project.root)
    print(f"\n`vid3d export --mesh`: old (bbox none, faces 0, extent/256 voxels) vs new defaults {' '.join(args.set)}")
    print(
        "| project | export | faces | MB | export s | export CPU s | precision at 1% (all) | Chamfer % of diagonal "
        "| F-score at 1% |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['project']} | {r['variant']} | {r['faces']:,} | {r['mb']} | {r['export_s']} | "
            f"{r['export_cpu_s'] or '-'} | "
            f"{r['precision_at_1pct']} | {r['chamfer_pct_of_diagonal']} | {r['fscore_at_1pct']} |"
        )


if __name__ == "__main__":
    main()
