"""The chain of stages: each one's fingerprint, its inputs, and how it runs (cached when unchanged)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vid3d.config import Settings, as_dict
from vid3d.errors import UserError
from vid3d.project import Project, StageResult, fingerprint


@dataclass
class Context:
    project: Project
    settings: Settings
    device: str = "auto"
    force: tuple[str, ...] = ()  # stages to rerun even when cached
    results: list[StageResult] = field(default_factory=list)

    def run(self, stage: str, fp: str, settings: dict, inputs: dict, work) -> StageResult:
        result = self.project.run_stage(stage, fp, settings, inputs, work, force=stage in self.force)
        self.results.append(result)
        return result


def generate(ctx: Context) -> StageResult:
    """A video from the reference image with a video diffusion model, as generate/."""
    from vid3d.generate.stage import generate_video, model_fingerprint, read_image
    from vid3d.ingest import input_fingerprint
    from vid3d.splats.train import resolve_device

    settings = ctx.settings.generate
    if not settings.image:
        raise UserError("no reference image: pass --image REF.png (it is remembered by the project)")
    image = Path(settings.image)
    read_image(image)
    values = as_dict(settings)
    inputs = {"image": input_fingerprint(image), "model": model_fingerprint(settings.model)}
    fp = fingerprint("generate", {k: v for k, v in values.items() if k != "image"}, inputs)
    device = resolve_device(ctx.device)
    return ctx.run("generate", fp, values, inputs, lambda out: generate_video(settings, out, device))


def frames(ctx: Context) -> StageResult:
    """Ingest the input video or image folder (or the generated video) into frames/."""
    from vid3d.ingest import ingest, input_fingerprint

    settings = ctx.settings.frames
    if not settings.input and ctx.settings.generate.image:
        upstream = generate(ctx)
        path = ctx.project.stage_dir("generate") / "frames"
        inputs = {"generate": upstream.fingerprint}
        values = as_dict(settings)
        fp = fingerprint("frames", values, inputs)
        return ctx.run("frames", fp, values, inputs, lambda out: ingest(path, settings, out))
    if not settings.input:
        raise UserError("no input: pass --input VIDEO_OR_IMAGE_FOLDER, or --image REF.png to `vid3d generate` "
                        "(it is remembered by the project)")
    path = Path(settings.input)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; pass a video file or a folder of images to --input")
    values = as_dict(settings)
    inputs = {"input": input_fingerprint(path)}
    # The input's path is not part of the fingerprint: a moved video with the same content stays cached.
    fp = fingerprint("frames", {k: v for k, v in values.items() if k != "input"}, inputs)
    return ctx.run("frames", fp, values, inputs, lambda out: ingest(path, settings, out))


def poses(ctx: Context) -> StageResult:
    """Camera poses of the frames with pycolmap, as poses/ (COLMAP + nerfstudio dataset)."""
    from vid3d.poses import estimate_poses

    upstream = frames(ctx)
    frames_dir = ctx.project.stage_dir("frames")
    kind = json.loads((frames_dir / "index.json").read_text())["kind"]
    settings, inputs = ctx.settings.poses, {"frames": upstream.fingerprint}
    cameras = _known_cameras(ctx)
    if cameras is not None:
        from vid3d.poses.given import poses_from_cameras, read_cameras
        from vid3d.project import file_fingerprint

        read_cameras(cameras)
        inputs["cameras"] = file_fingerprint(cameras)
        fp = fingerprint("poses", as_dict(settings), inputs)
        return ctx.run("poses", fp, as_dict(settings), inputs,
                       lambda out: poses_from_cameras(frames_dir, cameras, out, seed=settings.seed))
    fp = fingerprint("poses", as_dict(settings), inputs)
    return ctx.run("poses", fp, as_dict(settings), inputs,
                   lambda out: estimate_poses(frames_dir, kind, settings, out, ctx.device))


def _known_cameras(ctx: Context) -> Path | None:
    """poses.cameras, else the generated video's cameras when the frames come from it."""
    if ctx.settings.poses.cameras:
        path = Path(ctx.settings.poses.cameras)
        if not path.is_file():
            raise UserError(f"{path}: no such cameras file (poses.cameras / --poses); pass vid3d generate's "
                            "cameras.json")
        return path
    generated = ctx.project.stage_dir("generate") / "cameras.json"
    if not ctx.settings.frames.input and ctx.settings.generate.image and generated.is_file():
        return generated
    return None


def splats(ctx: Context) -> StageResult:
    """3D Gaussians trained on poses/, as splats/; resumes from its last checkpoint."""
    from vid3d.splats.train import train_splats

    upstream = poses(ctx)
    settings, inputs = ctx.settings.splats, {"poses": upstream.fingerprint}
    fp = fingerprint("splats", as_dict(settings), inputs)
    resume = ctx.project.resume_dir("splats", fp)
    return ctx.run("splats", fp, as_dict(settings), inputs,
                   lambda out: train_splats(ctx.project.stage_dir("poses"), settings, out, resume, ctx.device))


def export(ctx: Context) -> StageResult:
    """Meshes, splats, point clouds and cameras from the trained Gaussians, as export/."""
    from vid3d.export import export_assets

    upstream = splats(ctx)
    settings, inputs = ctx.settings.export, {"splats": upstream.fingerprint}
    fp = fingerprint("export", as_dict(settings), inputs)
    return ctx.run("export", fp, as_dict(settings), inputs,
                   lambda out: export_assets(ctx.project.stage_dir("splats"), ctx.project.stage_dir("poses"),
                                             settings, out, ctx.device))
