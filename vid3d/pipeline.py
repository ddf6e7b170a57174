"""The chain of stages as a table: each stage's name and its plan (what it reads, and its work).

`run(ctx, name)` plans stage `name` (running the stages it reads first), computes its fingerprint
(the settings its outputs depend on, its inputs' fingerprints and the vid3d version) and runs it,
or returns it cached when nothing changed. A stage that keeps some outputs of earlier runs (export)
plans which to keep and which to write, and hands that plan to its work. Each stage's package owns
the folder the stage writes (see docs/architecture.md).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vid3d.config import Settings, as_dict
from vid3d.errors import UserError
from vid3d.export import export_assets, plan_export
from vid3d.project import Project, StageOutput, StageResult, file_fingerprint, fingerprint
from vid3d.ui import log


@dataclass
class Context:
    project: Project
    settings: Settings
    device: str = "auto"
    force: tuple[str, ...] = ()  # stages to rerun even when cached
    results: list[StageResult] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # of the stages run (or cached) so far
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # each planned stage's inputs' fingerprints


@dataclass(frozen=True)
class Planned:
    """A stage's run, planned: what its fingerprint hashes, and the work that writes its outputs."""

    inputs: dict[str, Any]  # fingerprints of what it reads
    settings: dict[str, Any]  # the settings its outputs depend on
    work: Callable[[Path], StageOutput]  # writes its outputs into the given (temporary) folder


@dataclass(frozen=True)
class Stage:
    name: str  # also its folder in the project and its [section] of the settings
    plan: Callable[[Context], Planned]  # runs the stages it reads first


def reads(
    name: str,
    inputs: Callable[[Context], dict[str, str]],
    work: Callable[[Context, Path], StageOutput],
    input_paths: tuple[str, ...] = (),
) -> Stage:
    """A stage whose outputs depend on all its settings and on `inputs` (fingerprints of what it
    reads), written by `work`. Settings in `input_paths` name an input file: when set, the file's
    content is fingerprinted (in `inputs`) and its path is not, so a moved video stays cached."""

    def plan(ctx: Context) -> Planned:
        read = inputs(ctx)
        values = as_dict(getattr(ctx.settings, name))
        hashed = {k: v for k, v in values.items() if not (k in input_paths and v)}
        return Planned(read, hashed, lambda out: work(ctx, out))

    return Stage(name, plan)


def run(ctx: Context, name: str) -> StageResult:
    """Stage `name` and, first, every stage it reads; each one cached when unchanged."""
    planned = STAGE_TABLE[name].plan(ctx)
    fp = ctx.fingerprints[name] = fingerprint(name, planned.settings, planned.inputs)
    ctx.inputs[name] = planned.inputs
    values = as_dict(getattr(ctx.settings, name))
    result = ctx.project.run_stage(name, fp, values, planned.inputs, planned.work, force=name in ctx.force)
    ctx.results.append(result)
    return result


# -- generate: a video from the reference image with a video diffusion model -------------------------
def _generate_inputs(ctx: Context) -> dict[str, str]:
    from vid3d.generate.stage import given_cameras, model_fingerprint, read_reference
    from vid3d.ingest import input_fingerprint

    settings = ctx.settings.generate
    if not settings.image:
        raise UserError("no reference image: pass --image REF.png (it is remembered by the project)")
    image = Path(settings.image)
    read_reference(image)
    inputs = {"image": input_fingerprint(image), "model": model_fingerprint(settings.model)}
    if given_cameras(settings):  # a malformed file fails before any work
        inputs["cameras"] = file_fingerprint(Path(settings.cameras))
    return inputs


def _generate(ctx: Context, out: Path) -> StageOutput:
    from vid3d.device import resolve_device
    from vid3d.generate.stage import generate_video

    return generate_video(ctx.settings.generate, out, resolve_device(ctx.device))


# -- frames: the input video or image folder (or the generated video), sampled -----------------------
def _from_generated(ctx: Context) -> bool:
    return not ctx.settings.frames.input and bool(ctx.settings.generate.image)


def _frames_inputs(ctx: Context) -> dict[str, str]:
    from vid3d.ingest import input_fingerprint

    if _from_generated(ctx):
        return {"generate": run(ctx, "generate").fingerprint}
    if not ctx.settings.frames.input:
        raise UserError(
            "no input: pass --input VIDEO_OR_IMAGE_FOLDER, or --image REF.png to `vid3d generate` "
            "(it is remembered by the project)"
        )
    path = Path(ctx.settings.frames.input)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; pass a video file or a folder of images to --input")
    if _dataset_input(ctx):  # a malformed dataset or a missing image fails before any work
        from vid3d.ingest.datasets import dataset_fingerprint, read_dataset_input

        return {"dataset": dataset_fingerprint(read_dataset_input(path, ctx.settings.frames.min_frames))}
    return {"input": input_fingerprint(path)}


def _dataset_input(ctx: Context) -> bool:
    """Whether --input is a nerfstudio, instant-ngp or COLMAP dataset, whose cameras are used as given."""
    from vid3d.ingest.dataset_layout import dataset_format  # no pycolmap: cached reruns call this

    return bool(ctx.settings.frames.input) and dataset_format(Path(ctx.settings.frames.input)) is not None


def _frames(ctx: Context, out: Path) -> StageOutput:
    from vid3d.generate.output import GeneratedVideo
    from vid3d.ingest import ingest

    path = (
        GeneratedVideo.read(ctx.project.stage_dir("generate")).frames_dir
        if _from_generated(ctx)
        else Path(ctx.settings.frames.input)
    )
    if _dataset_input(ctx):
        from vid3d.ingest.datasets import ingest_dataset, read_dataset_input

        return ingest_dataset(read_dataset_input(path, ctx.settings.frames.min_frames), out)
    return ingest(path, ctx.settings.frames, out)


# -- poses: cameras of the frames with pycolmap, or known cameras -------------------------------------
def _known_cameras(ctx: Context) -> Path | None:
    """poses.cameras, else the generated video's cameras when the frames come from it."""
    if ctx.settings.poses.cameras:
        path = Path(ctx.settings.poses.cameras)
        if not path.is_file():
            raise UserError(
                f"{path}: no such cameras file (poses.cameras / --poses); pass vid3d generate's cameras.json"
            )
        return path
    if _from_generated(ctx):
        from vid3d.generate.output import GeneratedVideo  # imageio: only when there is a generated video

        return GeneratedVideo.read(ctx.project.stage_dir("generate")).cameras_file
    return None


def _poses_inputs(ctx: Context) -> dict[str, str]:
    if ctx.settings.poses.cameras and _dataset_input(ctx):
        raise UserError(
            f"poses.cameras (--poses): {ctx.settings.frames.input} is a dataset with its own cameras; "
            "drop --poses (or set poses.cameras to empty)"
        )
    inputs = {"frames": run(ctx, "frames").fingerprint}
    cameras = _known_cameras(ctx)
    if cameras is not None:
        from vid3d.cameras import read_cameras

        read_cameras(cameras)  # a malformed file fails before any work
        inputs["cameras"] = file_fingerprint(cameras)
    return inputs


def _poses(ctx: Context, out: Path) -> StageOutput:
    from vid3d.ingest.datasets import is_dataset_frames

    frames_dir, settings, cameras = ctx.project.stage_dir("frames"), ctx.settings.poses, _known_cameras(ctx)
    if is_dataset_frames(frames_dir):
        from vid3d.poses.imported import poses_from_dataset

        return poses_from_dataset(frames_dir, out, seed=settings.seed)
    if cameras is not None:
        from vid3d.poses.given import poses_from_cameras

        return poses_from_cameras(frames_dir, cameras, out, seed=settings.seed)
    from vid3d.poses.colmap import estimate_poses

    return estimate_poses(frames_dir, settings, out, ctx.device)


# -- splats: 3D Gaussians trained on poses/; resumes from its last checkpoint -------------------------
def _generated_splats(ctx: Context) -> Path | None:
    """generate/splats.ply when splats.init = generate (a UserError when it cannot be used)."""
    from vid3d.generate.output import GeneratedVideo

    if ctx.settings.splats.init != "generate":
        return None
    generated = GeneratedVideo.read(ctx.project.stage_dir("generate"))
    if generated.splats_file is None or generated.cameras_file is None:
        raise UserError(
            "splats.init = generate: generate/splats.ply is missing, or was fitted at cameras the "
            "feedback loop estimated itself (not the poses'); set splats.init = points"
        )
    return generated.splats_file


def _splats_inputs(ctx: Context) -> dict[str, str]:
    if ctx.settings.splats.init == "generate" and (
        not _from_generated(ctx) or ctx.settings.generate.feedback == "off" or ctx.settings.poses.cameras
    ):
        raise UserError(
            "splats.init = generate: needs the Gaussians of generate's feedback loop "
            "(generate/splats.ply, written when generate.feedback is not off) and the "
            "generated cameras as poses; set splats.init = points"
        )
    inputs = {"poses": run(ctx, "poses").fingerprint}
    start = _generated_splats(ctx)
    if start is not None:
        inputs["start"] = file_fingerprint(start)
    return inputs


def _splats(ctx: Context, out: Path) -> StageOutput:
    from vid3d.splats.train import train_splats

    fp, settings = ctx.fingerprints["splats"], as_dict(ctx.settings.splats)
    _say_why_not_resumed(ctx.project, "splats", fp, settings, ctx.inputs["splats"])
    resume = ctx.project.start_resumable("splats", fp, settings, ctx.inputs["splats"])
    if "splats" not in ctx.force:
        _resume_from_finished_training(ctx.project, fp, resume)
    return train_splats(
        ctx.project.stage_dir("poses"), ctx.settings.splats, out, resume, ctx.device, start=_generated_splats(ctx)
    )


def _say_why_not_resumed(project: Project, stage: str, fp: str, settings: dict, inputs: dict) -> None:
    """One line when a checkpoint of another run of the stage waits and this run does not continue it:
    the settings that differ and the command that would continue it, or the inputs that changed."""
    waiting = next((run for run in project.checkpoints(stage) if run["fingerprint"] != fp), None)
    if waiting is None or "step" not in waiting:
        return
    ours, theirs = _differing(json.loads(json.dumps(settings, default=str)), waiting.get("settings", {}))
    if ours:
        why = "; ".join(f"{stage}.{key} = {ours[key]!r} here, {theirs[key]!r} there" for key in ours)
        why += f"; `{waiting.get('command', '?')}` continues it"
    else:
        changed = ", ".join(_differing(inputs, waiting.get("inputs", {}))[0]) or "the vid3d version"
        why = f"what it was trained on changed since ({changed}), so it cannot be continued"
    log.warning(
        "%s: not continuing the checkpoint at step %s (started %s): %s; this run starts from step 0",
        stage,
        waiting["step"],
        waiting.get("started", "?"),
        why,
    )


def _differing(ours: dict, theirs: dict) -> tuple[dict, dict]:
    keys = [key for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
    return {key: ours.get(key) for key in keys}, {key: theirs.get(key) for key in keys}


def _resume_from_finished_training(project: Project, fp: str, resume: Path) -> None:
    """splats/ of this fingerprint with a damaged file (a truncated splats.ply) but its final
    checkpoint intact: resume from that checkpoint, so the rerun rebuilds the files without training."""
    from vid3d.splats.train import CHECKPOINT, CHECKPOINT_DIR

    finished = f"{CHECKPOINT_DIR}/{CHECKPOINT}"
    if (resume / CHECKPOINT).exists() or finished not in project.intact_files("splats", fp):
        return
    resume.mkdir(parents=True, exist_ok=True)
    shutil.copy2(project.stage_dir("splats") / finished, resume / CHECKPOINT)


# -- export: meshes, splats, point clouds and cameras from the Gaussians ------------------------------
def _export_plan(ctx: Context) -> Planned:
    """Export keeps the assets of earlier runs: its fingerprint is theirs and the new ones' (each
    with its own settings), and its work writes only the new ones."""
    project = ctx.project
    splats_fp = run(ctx, "splats").fingerprint
    plan = plan_export(project, ctx.settings.export, splats_fp, force="export" in ctx.force)
    folders = (project.stage_dir("export"), project.stage_dir("splats"), project.stage_dir("poses"))
    return Planned(
        inputs={"splats": splats_fp, "assets": plan.fingerprints()},
        settings={},
        work=lambda out: export_assets(plan, *folders, out, ctx.device),
    )


STAGE_TABLE: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        reads("generate", _generate_inputs, _generate, input_paths=("image", "cameras")),
        reads("frames", _frames_inputs, _frames, input_paths=("input",)),
        reads("poses", _poses_inputs, _poses),
        reads("splats", _splats_inputs, _splats),
        Stage("export", _export_plan),
    )
}
