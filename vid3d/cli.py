"""The `vid3d` command line: thin Typer commands over vid3d.pipeline.

Exit codes: 0 success, 1 a stage failed, 2 bad usage or bad input. Errors are one line on
stderr (tracebacks go to PROJECT/logs/vid3d.log, and to the terminal with -v). With --json,
stdout carries exactly one JSON object.
"""

from __future__ import annotations

import os

# Set before numpy, OpenCV or pycolmap load their OpenBLAS: when pycolmap's worker threads call an
# OpenBLAS that runs its own thread pool, OpenBLAS can exhaust its buffer table and print
# "BLAS : Bad memory unallocation!" on stdout at exit (2 runs in 12 here), which breaks --json.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from vid3d.threads import set_openmp_defaults

set_openmp_defaults()  # before torch loads libgomp: threads for a container's CPU quota

import dataclasses
import functools
import inspect
import json
import logging
import shutil
import signal
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from vid3d import __version__, pipeline, ui
from vid3d.config import Layer, Settings, load_settings, read_config, read_preset, read_toml, set_layer, setting_field
from vid3d.device import check_device
from vid3d.errors import StageError, UserError
from vid3d.export import FLAG_KINDS, AssetKind, either
from vid3d.project import LOCK_FILE, MANIFEST, SETTINGS_FILE, STAGES, Project, StageResult
from vid3d.ui import console, log

app = typer.Typer(
    help="vid3d: video to 3D. Generate video, recover cameras, fit Gaussian splats, export meshes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProjectArg = Annotated[Path, typer.Argument(help="Project folder (created if missing).", show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (see configs/default.toml).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override one setting: stage.key=value (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun this command's stage even when cached.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (status, outputs, metrics) on stdout.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
STAGE_COMMANDS = {"splats": "reconstruct"}  # the command of each stage whose name is not its own
VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging and tracebacks on the terminal.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for another process using the project instead of failing.")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="fast (CPU preview), default or quality.")]


@dataclass
class Common:
    """The options every stage command takes: each field is one, its annotation its typer option."""

    config: ConfigOpt = None
    sets: SetOpt = None
    force: ForceOpt = False
    json: JsonOpt = False
    device: DeviceOpt = "auto"
    verbose: VerboseOpt = False
    wait: WaitOpt = False


KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True)
class SettingFlag:
    """A flag that sets one setting. Its value is a settings layer named as the user typed it
    ("--frames 1"), so an error names the flag."""

    decls: tuple[str, ...]  # ("--frames",), ("--loop/--no-loop",) for a bool, ("--input", "-i")
    setting: str  # stage.key
    help: str = ""  # default: the setting's own help text
    path: bool = False  # a file or folder: the setting holds its absolute path

    @property
    def name(self) -> str:
        return self.decls[0].split("/")[0].lstrip("-").replace("-", "_")

    def parameters(self) -> list[inspect.Parameter]:
        hint, help = setting_field(*self.setting.split("."))
        kind = Path if self.path else hint if hint in (bool, int, float) else str
        if typing.get_origin(hint) is Literal:
            help = f"{help} ({either(typing.get_args(hint))})"
        option = typer.Option(*self.decls, help=self.help or f"{help[0].upper()}{help[1:]}.", show_default=False)
        return [inspect.Parameter(self.name, KEYWORD, annotation=Annotated[kind | None, option], default=None)]

    def layer(self, values: dict) -> Layer | None:
        value = values[self.name]
        if value is None:
            return None
        stage, key = self.setting.split(".")
        on, _, off = self.decls[0].partition("/")
        typed = (on if value else off) if isinstance(value, bool) else f"{self.decls[0]} {value}"
        return Layer({stage: {key: str(value.resolve()) if self.path else value}}, typed, flag=True)


@dataclass(frozen=True)
class AssetFlags:
    """`vid3d export`'s flags that choose assets, one per row of export.ASSET_KINDS: with any of them,
    they decide every kind (one layer); with none, the [export] settings do."""

    def parameters(self) -> list[inspect.Parameter]:
        return [
            inspect.Parameter(
                kind.name, KEYWORD, annotation=self._option(kind), default=None if kind.formats else False
            )
            for kind in FLAG_KINDS
        ]

    def layer(self, values: dict) -> Layer | None:
        chosen = {kind.name: values[kind.name] for kind in FLAG_KINDS if values[kind.name]}
        if not chosen:
            return None
        typed = " ".join(
            " ".join(f"--{name} {v}" for v in value) if isinstance(value, list) else f"--{name}"
            for name, value in chosen.items()
        )
        asked = {
            kind.name: ",".join(chosen.get(kind.name, [])) if kind.formats else kind.name in chosen
            for kind in FLAG_KINDS
        }
        return Layer({"export": asked}, typed, flag=True)

    @staticmethod
    def _option(kind: AssetKind) -> Any:
        """--NAME: true or false, or for a kind with several formats, one format (repeatable)."""
        if kind.formats:
            help = f"{kind.help}: {either(kind.formats)} (repeatable)."
            return Annotated[list[str] | None, typer.Option(f"--{kind.name}", help=help)]
        return Annotated[bool, typer.Option(f"--{kind.name}", help=f"{kind.help}.")]


INPUT = SettingFlag(
    ("--input", "-i"),
    "frames.input",
    "Video file, folder of images, or dataset (nerfstudio/instant-ngp transforms.json, or a "
    "COLMAP project: sparse/0 and images/).",
    path=True,
)
IMAGE = SettingFlag(("--image",), "generate.image", "Reference image (PNG or JPEG).", path=True)
POSES = SettingFlag(
    ("--poses",), "poses.cameras", "Known cameras (vid3d generate's cameras.json) instead of COLMAP.", path=True
)


def stage_command(*flags: SettingFlag | AssetFlags, help: str | None = None):
    """Register `function(project, ..., common: Common, layers: list[Layer])` as a command that takes
    the Common options and `flags` besides its own parameters; `layers` are the flags' layers."""

    def register(function: Callable[..., None]) -> Callable[..., None]:
        own = [
            p
            for p in inspect.signature(function, eval_str=True).parameters.values()
            if p.name not in ("common", "layers")
        ]
        hints = typing.get_type_hints(Common, include_extras=True)
        shared = [
            inspect.Parameter(f.name, KEYWORD, annotation=hints[f.name], default=f.default)
            for f in dataclasses.fields(Common)
        ]
        flag_parameters = [p for flag in flags for p in flag.parameters()]

        @functools.wraps(function)
        def command(**values):
            common = Common(**{f.name: values.pop(f.name) for f in dataclasses.fields(Common)})
            layers = [layer for flag in flags if (layer := flag.layer(values)) is not None]
            for p in flag_parameters:
                values.pop(p.name)
            function(**values, common=common, layers=layers)

        parameters = own[:1] + flag_parameters + [p.replace(kind=KEYWORD) for p in own[1:]] + shared
        assert len({p.name for p in parameters}) == len(parameters), f"{function.__name__}: two flags, one name"
        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return app.command(help=help)(command)

    return register


@stage_command(
    IMAGE,
    SettingFlag(("--prompt",), "generate.prompt", "Text prompt, for models that take one."),
    SettingFlag(
        ("--model",),
        "generate.model",
        "Diffusers pipeline folder or cached Hugging Face id (SVD, CogVideoX I2V, "
        "Wan 2.1/2.2 I2V); default: the embedded orbit model.",
    ),
    SettingFlag(("--frames",), "generate.frames", "Frames to generate."),
    SettingFlag(("--loop/--no-loop",), "generate.loop", "Circular windows (closed orbit)."),
    SettingFlag(
        ("--cameras",),
        "generate.cameras",
        "The frames' cameras (cameras.json) for the feedback loop of a model without its own.",
        path=True,
    ),
)
def generate(project: ProjectArg, *, common: Common, layers: list[Layer]) -> None:
    """A long, temporally coherent video from a reference image, as generate/ (frames, video.mp4, metrics).

    Under torchrun the windows of every step spread over the ranks; rank 0 owns the project."""
    from vid3d.generate import ranks

    with ranks.joined(common.device) as group:  # one rank, torch not loaded, outside torchrun
        if group.leads:
            _execute(project, common, "generate", layers)
        else:
            _predict_windows(group, common)


@stage_command(INPUT)
def frames(project: ProjectArg, *, common: Common, layers: list[Layer]) -> None:
    """Ingest a video or image folder into frames/: even sampling, sharpest frames, resized."""
    _execute(project, common, "frames", layers)


@stage_command(INPUT, POSES)
def poses(project: ProjectArg, *, common: Common, layers: list[Layer]) -> None:
    """Camera poses with pycolmap (or known cameras): ingest the input into frames/, then write poses/."""
    _execute(project, common, "poses", layers)


@stage_command(INPUT, SettingFlag(("--backend",), "splats.backend", "auto, gsplat (CUDA) or torch."), POSES)
def reconstruct(project: ProjectArg, preset: PresetOpt = None, *, common: Common, layers: list[Layer]) -> None:
    """3D Gaussian Splatting: runs frames and poses when missing or stale, then trains splats/."""
    _execute(project, common, "splats", layers, preset=preset)


@stage_command(
    AssetFlags(),
    *(SettingFlag((flag,), f"export.{key}") for kind in FLAG_KINDS for flag, key in kind.flags.items()),
    INPUT,
    help="Export assets from the Gaussians (runs the stages before it when missing or stale).\n\n"
    f"With any of {', '.join(f'--{kind.name}' for kind in FLAG_KINDS)}, those are written; with none, the "
    "export.* settings decide (a mesh by default). Files from earlier exports of the same splats "
    "stay in export/; each is rewritten only when its own settings change, or with --force.",
)
def export(project: ProjectArg, *, common: Common, layers: list[Layer]) -> None:
    _execute(project, common, "export", layers)


@stage_command(INPUT)
def run(project: ProjectArg, preset: PresetOpt = None, *, common: Common, layers: list[Layer]) -> None:
    """Every stage in order (frames, poses, splats, export), each cached; --force reruns them all."""
    _execute(project, common, "export", layers, preset=preset, force_all=True)


@app.command()
def demo(
    project: Annotated[Path, typer.Argument(help="Project folder for the demo.")] = Path("vid3d-demo"),
    json: JsonOpt = False,
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
    force: ForceOpt = False,
) -> None:
    """The whole chain on the bundled example (fast preset), then a summary against the true scene."""
    from vid3d.demo import (
        EXAMPLE_REFERENCE,
        EXAMPLE_VIDEO,
        GENERATED_CONFIG,
        VIDEO_CONFIG,
        generated_summary,
        summary,
    )
    from vid3d.report import REPORT_FILE

    common = Common(force=force, json=json, device=device, verbose=verbose)
    video = _execute(
        project,
        common,
        "export",
        [INPUT.layer({"input": EXAMPLE_VIDEO})],
        preset="fast",
        configs=(VIDEO_CONFIG,),
        force_all=True,
        summarize=summary,
        report=False,
    )
    generated = _execute(
        project / "generated",
        common,
        "export",
        [IMAGE.layer({"image": EXAMPLE_REFERENCE})],
        preset="fast",
        configs=(GENERATED_CONFIG,),
        force_all=True,
        summarize=generated_summary,
        report=False,
    )
    reports = [str(project / REPORT_FILE), str(project / "generated" / REPORT_FILE)]
    if json:
        print(_dumps({**video, "generated": generated, "reports": reports}))
        return
    _print_report(video, "export")
    console.print(Text.assemble(("generated", "bold"), ": the reference image -> orbit video -> Gaussians -> mesh"))
    _print_report(generated, "export")
    console.print(f"report: {reports[0]}\nreport: {reports[1]}\nin 3D: vid3d view {project}", soft_wrap=True)


@app.command()
def view(
    project: Annotated[Path, typer.Argument(help="Project folder.", show_default=False)],
    port: Annotated[int, typer.Option("--port", help="Port to serve on (the next free one when taken).")] = 8080,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for other machines.")
    ] = "127.0.0.1",
    verbose: VerboseOpt = False,
) -> None:
    """Show the project in the browser (viser): Gaussians, cameras with their frames, points, mesh."""
    from vid3d.view import serve

    _setup_logging(verbose)
    # Stopped by either signal whatever this process inherited: a script started from a
    # non-interactive shell has SIGINT ignored, and services are stopped with SIGTERM.
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        _check_project_folder(project, must_exist=True)
        serve(project, host, port)
    except UserError as exc:
        _fail(str(exc), exc.exit_code, False)
    # The server is stopped and its port closed; nothing is left to write. The interpreter's own
    # teardown (torch, viser's modules) takes 0.7-1.5 s here, so the process ends now.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


@app.command()
def report(
    project: Annotated[Path, typer.Argument(help="Project folder.", show_default=False)], verbose: VerboseOpt = False
) -> None:
    """Write PROJECT/report.html (every stage refreshes it too) and print its path."""
    from vid3d.report import REPORT_FILE, write_report

    _setup_logging(verbose)
    try:
        _check_project_folder(project, must_exist=True)
        path = write_report(project)
    except UserError as exc:
        _fail(str(exc), exc.exit_code, False)
    except Exception as exc:  # noqa: BLE001  # any failure: one line, the traceback in the log
        log.debug("report failed", exc_info=True)
        _fail(
            f"{project / REPORT_FILE}: not written ({type(exc).__name__}: {exc}); rerun with -v for details", 1, False
        )
    print(path)


@app.command()
def metrics(
    path: Annotated[Path, typer.Argument(help="Video file, image folder or project.", show_default=False)],
    json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Temporal consistency of a video: warping error, flicker and loop closure; with the cameras of a
    generated video (cameras.json beside it, or a project's), its epipolar error too; for a project
    generated from a reference whose true scene is known (the demo's), the 3D it yields against it."""
    from vid3d.metrics.video import load_frames, video_metrics

    _setup_logging(verbose)
    try:
        frames = load_frames(path)
        if len(frames) < 2:
            raise UserError(f"{path}: needs at least two frames")
        cameras = _cameras_of(path)
    except UserError as exc:
        _fail(str(exc), exc.exit_code, json)
    report = video_metrics(frames)
    if cameras is not None and len(cameras) >= len(frames):
        from vid3d.metrics.epipolar import camera_epipolar_error

        report.update(camera_epipolar_error(frames, cameras))
    report.update(_scene_measures(path, frames))
    if json:
        print(_dumps({"status": "ok", "path": str(path), "metrics": report}))
        return
    _print_measures(str(path), report)


def _scene_measures(path: Path, frames: list) -> dict:
    """The 3D a generated project yields against its true scene, where one is known (a reference
    image with a sidecar naming its procedural scene, as examples/reference.png) and its splats and
    export stages ran; nothing otherwise."""
    if not (path / MANIFEST).is_file():
        return {}
    import numpy as np

    from vid3d.metrics.scene3d import measurable, project_measures, project_truth

    truth = project_truth(path)
    return project_measures(path, truth, np.stack(frames)) if truth is not None and measurable(path) else {}


def _cameras_of(path: Path):
    """The cameras of a generated video: a project's generate/cameras.json, or a cameras.json in the
    folder or beside the video; None when there are none."""
    from vid3d.generate.output import CAMERAS_FILE, GeneratedVideo, read_cameras

    generated = GeneratedVideo.read(Project(path).stage_dir("generate")).cameras_file
    found = next(
        (c for c in (generated, path / CAMERAS_FILE, path.parent / CAMERAS_FILE) if c is not None and c.is_file()), None
    )
    return None if found is None else read_cameras(found)


@app.command()
def status(project: ProjectArg, json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Show each stage of a project: complete, stale, failed or missing, with its metrics."""
    _setup_logging(verbose)
    try:
        _check_project_folder(project, must_exist=True)
        stages = Project(project).status()
    except UserError as exc:
        _fail(str(exc), exc.exit_code, json)
    if json:
        print(_dumps({"status": "ok", "project": str(project), "stages": stages}))
        return
    table = Table(title=str(project))
    for column in ("stage", "status", "fingerprint", "finished", "seconds", "metrics"):
        table.add_column(column)
    for stage, record in stages.items():
        metrics = ", ".join(f"{k}={v}" for k, v in (record.get("metrics") or {}).items())
        table.add_row(
            stage,
            record["status"],
            record.get("fingerprint", ""),
            record.get("finished", ""),
            str(record.get("timings", {}).get("total", "")),
            metrics or record.get("error", ""),
        )
    console.print(table)
    for stage, record in stages.items():
        if "checkpoint" in record:
            console.print(_checkpoint_line(project, stage, record["checkpoint"]), soft_wrap=True)


def _checkpoint_line(project: Path, stage: str, checkpoint: dict) -> str:
    """A checkpoint waiting for a rerun: its step, what started it, and what continues it."""
    at = f"at step {checkpoint['step']} of {checkpoint['steps']}" if "step" in checkpoint else "(no step saved yet)"
    started = f"`{checkpoint['command']}` (started {checkpoint['started']})"
    bare = f"`vid3d {STAGE_COMMANDS.get(stage, stage)} {project}`"
    continues = f"that command or {bare}" if checkpoint["remembered"] else "that command"
    return f"{stage}: a checkpoint waits {at}, from {started}; {continues} continues it"


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)  # render farms stop jobs with SIGTERM: clean up as on Ctrl-C
    _keep_stdout_for_results()
    app()


def _keep_stdout_for_results() -> None:
    """Native libraries may write to file descriptor 1 (OpenBLAS's "BLAS : Bad memory unallocation!"
    under pycolmap's threads, seen in test runs despite OPENBLAS_NUM_THREADS=1): point descriptor 1
    at stderr and keep the real stdout for what vid3d itself prints, so --json output stays one line."""
    try:
        results = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no stdout or stderr to redirect
        return
    sys.stdout = os.fdopen(results, "w", buffering=1)


def _execute(
    project_dir: Path,
    common: Common,
    target: str,
    layers: list[Layer] = (),
    preset: str | None = None,
    configs: tuple[str, ...] = (),
    force_all: bool = False,
    summarize: Callable[[Path], dict] | None = None,
    report: bool = True,
) -> dict:
    """Run stage `target` (and the stages it reads) on the project; `layers` (the flags') sit
    between --config and --set, `configs` (configs/ files) on top of `preset`."""
    _setup_logging(common.verbose)
    from vid3d.generate.ranks import launched

    if launched() and target != "generate":
        _fail(
            f"vid3d {sys.argv[1]}: only vid3d generate spreads over torchrun's ranks; run this command once",
            2,
            common.json,
        )
    created = not project_dir.exists()
    new_parents = [parent for parent in project_dir.parents if not parent.exists()]  # innermost first
    project = Project(project_dir)
    ctx = None
    log_state: tuple[Path, int] | None = None
    try:
        check_device(common.device)  # a device that is not there fails before any work
        _check_project_folder(project_dir, must_exist=False)
        with project.lock(wait=common.wait):
            # Decided under the lock: a project another process made meanwhile is not ours to remove.
            created = created and not any((project_dir / f).exists() for f in (MANIFEST, SETTINGS_FILE))
            try:
                log_state = _attach_log_file(project_dir)
                log.debug("vid3d %s: %s", __version__, " ".join(sys.argv))
                forced = (STAGES if force_all else (target,)) if common.force else ()
                settings = _load_settings(project, common, layers, preset, configs)
                ctx = pipeline.Context(project, settings, common.device, force=forced)
                try:
                    pipeline.run(ctx, target)
                finally:  # after a failed stage too (it shows what ran); bad input leaves the project as it was
                    if not isinstance(sys.exc_info()[1], (UserError, KeyboardInterrupt)):
                        from vid3d.report import refresh_report  # matplotlib: only when a stage ran

                        refresh_report(project_dir)
            except UserError:
                _undo(project_dir, created, log_state, ctx, new_parents)  # before the lock is released
                raise
    except UserError as exc:
        _fail(str(exc), 2, common.json)
    except Exception as exc:  # noqa: BLE001  # a stage's failure: one line, the traceback in the log
        log.debug("failed", exc_info=True)
        if common.verbose:
            traceback.print_exc()
        message = (
            str(exc)
            if isinstance(exc, StageError)
            else f"{type(exc).__name__}: {exc} (details: {project_dir / 'logs' / 'vid3d.log'})"
        )
        _fail(message, 1, common.json)
    except KeyboardInterrupt as exc:
        # the shells' codes: 128 + the signal's number, so a farm tells its own stop from a user's Ctrl-C
        _fail(
            "interrupted; rerun the same command, or it without flags, to continue",
            143 if isinstance(exc, Terminated) else 130,
            common.json,
        )
    outcome = _outcome(project_dir, ctx.results, summarize(project_dir) if summarize else None)
    if report and common.json:
        print(_dumps(outcome))
    elif report:
        _print_report(outcome, target)
    return outcome


def _predict_windows(group, common: Common) -> None:
    """A rank other than 0 of `vid3d generate` under torchrun: it predicts its windows and writes
    nothing. Its own failure is one line here; a failure it sees because another rank stopped is
    that rank's to report."""
    from vid3d.device import resolve_device
    from vid3d.generate.ranks import lost_peer
    from vid3d.generate.stage import predict_windows

    _setup_logging(common.verbose)
    try:
        predict_windows(resolve_device(common.device))
    except UserError as exc:
        _fail(f"rank {group.rank}: {exc}", 2, common.json)
    except Exception as exc:  # noqa: BLE001
        if lost_peer(exc):
            log.debug("rank %d: another rank stopped", group.rank, exc_info=True)
            raise SystemExit(1) from None
        if common.verbose:
            traceback.print_exc()
        _fail(f"rank {group.rank}: {type(exc).__name__}: {exc}", 1, common.json)
    except KeyboardInterrupt as exc:
        raise SystemExit(143 if isinstance(exc, Terminated) else 130) from None


def _load_settings(
    project: Project, common: Common, flags: list[Layer], preset: str | None, configs: tuple[str, ...]
) -> Settings:
    """Defaults < the project's last settings (project.toml) < --preset < --config < flags < --set."""
    layers = [project.saved_settings()]
    if preset:
        layers.append(read_preset(preset))
    layers += map(read_config, configs)
    if common.config:
        layers.append(read_toml(common.config))
    return load_settings(*layers, *flags, *map(set_layer, common.sets or ()))


def _check_project_folder(path: Path, must_exist: bool) -> None:
    """Refuse to write into a file or into a folder of the user's that is not a vid3d project."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; pass a folder for the project")
    if must_exist and not any((path / f).exists() for f in (MANIFEST, SETTINGS_FILE, LOCK_FILE)):
        raise UserError(f"{path}: not a vid3d project (no {MANIFEST}); run a stage on it first")
    if (
        path.is_dir()
        and any(path.iterdir())
        and not any((path / f).exists() for f in (MANIFEST, SETTINGS_FILE, LOCK_FILE))
    ):
        raise UserError(f"{path}: exists and is not a vid3d project; pass a new or empty folder")


def _attach_log_file(project_dir: Path) -> tuple[Path, int]:
    path = project_dir / "logs" / "vid3d.log"
    path.parent.mkdir(exist_ok=True)
    size = path.stat().st_size if path.exists() else 0
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return path, size


def _undo(
    project_dir: Path, created: bool, log_state: tuple[Path, int] | None, ctx, new_parents: list[Path] = ()
) -> None:
    """After bad input, leave the project folder (and the parents made for it) as it was, unless a
    stage already completed."""
    for handler in list(log.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            log.removeHandler(handler)
    if ctx is not None and any(result.status == "complete" for result in ctx.results):
        return
    if created:
        shutil.rmtree(project_dir, ignore_errors=True)
        for parent in new_parents:
            try:
                parent.rmdir()  # only when empty: another project may have appeared beside ours
            except OSError:
                break
    elif log_state is not None:
        path, size = log_state
        if size == 0:
            path.unlink(missing_ok=True)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
        else:
            with path.open("r+") as f:
                f.truncate(size)


def _outcome(project_dir: Path, results: list[StageResult], summary: dict | None = None) -> dict:
    """What a command did, as --json prints it."""
    final = results[-1]
    outcome = {
        "status": "ok",
        "project": str(project_dir),
        "stages": {
            r.stage: {
                "status": r.status,
                "fingerprint": r.fingerprint,
                "seconds": round(r.seconds, 3),
                "outputs": r.outputs,
                "metrics": r.metrics,
            }
            for r in results
        },
        "outputs": [str(project_dir / o) for o in final.outputs],
        "metrics": final.metrics,
    }
    return outcome if summary is None else {**outcome, "summary": summary}


def _print_report(outcome: dict, target: str) -> None:
    for stage, r in outcome["stages"].items():
        metrics = ", ".join(f"{k}={v}" for k, v in r["metrics"].items())
        timing = "" if r["status"] == "cached" else f" in {r['seconds']:.1f}s"
        console.print(Text.assemble((stage, "bold"), f": {r['status']}{timing}  {metrics}"))
    if "summary" in outcome:
        _print_measures("summary", outcome["summary"])
    for output in outcome["outputs"]:
        console.print(f"{target}: {output}")


def _print_measures(title: str, measures: dict) -> None:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in measures.items():
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    console.print(Text.assemble(("error:", "red"), f" {message}"), soft_wrap=True)
    if as_json:
        print(_dumps({"status": "error" if code == 2 else "failed", "error": message, "exit_code": code}))
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=console, show_path=False, show_time=False, show_level=False, highlighter=NullHighlighter()
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.addHandler(handler)
    ui.verbose = verbose


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=str)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a training stage checkpoints on KeyboardInterrupt)."""


def _terminate(signum, frame) -> None:
    raise Terminated


if __name__ == "__main__":  # pragma: no cover
    main()
