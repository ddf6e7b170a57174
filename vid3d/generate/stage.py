"""The generate stage: a reference image to generate/ (frames, video.mp4, metrics.json, cameras.json;
see output.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from vid3d.cameras import Camera, read_cameras, stacked
from vid3d.config import GenerateSettings
from vid3d.device import resolve_dtype
from vid3d.errors import StageError, UserError
from vid3d.ingest import read_image
from vid3d.metrics.epipolar import epipolar_error
from vid3d.metrics.video import video_metrics
from vid3d.project import StageOutput
from vid3d.splats.model import save_ply
from vid3d.ui import log, progress

from .adapters import Request, VideoModel, adapter_class, load_model
from .feedback import Feedback, FeedbackLoop
from .model import WEIGHTS
from .output import SPLATS_FILE, write_video
from .ranks import Ranks, lost_peer
from .ranks import current as current_ranks
from .sampler import Plan, Stabilizers, sample, use_scheduler


def read_reference(path: Path) -> np.ndarray:
    """The reference image (--image) as uint8 RGB."""
    if not path.is_file():
        raise UserError(f"{path}: no such image; pass a PNG or JPEG to --image")
    return read_image(path, fix="pass a PNG or JPEG to --image")


# What generating holds per video pixel at least, whichever the model: every adapter decodes the whole
# video at once to float32 RGB (12 bytes) and keeps it as uint8 (3); the sampler holds about four
# whole-video latents (latents, scaled input, the windows' outputs, the fused prediction) of at least
# 1/16 float32 per pixel (SVD and CogVideoX: 4-16 channels at 1/8 of each side, CogVideoX 1/4 of the frames).
BYTES_PER_VIDEO_PIXEL = 12 + 3 + 1


def video_memory(settings: GenerateSettings) -> int:
    """A lower bound, in bytes, of the memory generating `settings.frames` frames takes (at the
    embedded model's frame size when the size is the model's own: no model makes smaller frames)."""
    from .model import SIZE

    return settings.frames * (settings.height or SIZE) * (settings.width or SIZE) * BYTES_PER_VIDEO_PIXEL


def available_memory(device: torch.device) -> int:
    """Bytes free on `device`: CUDA's free memory, or the RAM the kernel says is available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # not Linux: all of the RAM
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(settings: GenerateSettings, device: torch.device) -> None:
    """Refuse, before the model loads, a video that cannot fit in what the device has."""
    needed, available = video_memory(settings), available_memory(device)
    if needed > available:
        most = available * settings.frames // needed
        raise UserError(
            f"generate.frames = {settings.frames}: needs at least {needed / 2**30:.1f} GiB for the video "
            f"and its latents, {device} has {available / 2**30:.1f} GiB free; generate at most {most} "
            "frames here (or smaller ones), or use a device with more memory"
        )


def anchor_latents(settings: GenerateSettings, num_frames: int, num_latent: int) -> tuple[int, ...]:
    """Latent frames used as anchors: listed video frames, or the first and every Nth."""
    if settings.anchor_frames.strip():
        try:
            frames = [int(part) for part in settings.anchor_frames.split(",") if part.strip()]
        except ValueError:
            raise UserError(
                f"generate.anchor_frames = {settings.anchor_frames!r}: expected comma-separated "
                "frame numbers, e.g. 0,24"
            ) from None
        bad = [f for f in frames if not 0 <= f < num_frames]
        if bad:
            raise UserError(f"generate.anchor_frames: {bad} outside the video's frames 0..{num_frames - 1}")
    elif settings.anchor_every:
        frames = list(range(0, num_frames, settings.anchor_every))
    else:
        return ()
    scale = (num_latent - 1) / max(num_frames - 1, 1)
    return tuple(sorted({round(f * scale) for f in frames}))


def model_fingerprint(spec: str) -> str:
    """Identity of the model's weights: their files' fingerprints for a folder (the embedded model's
    by default), else the name (a Hugging Face id or a tiny test model, built the same every time)."""
    from vid3d.project import file_fingerprint

    folder = Path(spec) if spec else WEIGHTS
    if not folder.is_dir():
        return spec
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    listing = ",".join(f"{p.relative_to(folder)}:{file_fingerprint(p)}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def generate(
    model: VideoModel,
    request: Request,
    settings: GenerateSettings,
    on_step=None,
    feedback: FeedbackLoop | None = None,
    ranks: Ranks | None = None,
) -> np.ndarray | None:
    """uint8 frames [F, H, W, 3] for `request` with the settings' plan and stabilizers (None on a
    rank other than 0 of several, which only predicts its windows)."""
    use_scheduler(model, settings.scheduler)
    num_latent = model.latent_frames(request.num_frames)
    generator = torch.Generator("cpu").manual_seed(settings.seed)  # the same noise on every device
    condition = model.prepare(request, generator)  # any draws here are the same on every rank: one seed
    stabilizers = Stabilizers.of(settings, anchors=anchor_latents(settings, request.num_frames, num_latent))
    plan = Plan.of(settings)
    latents = sample(model, condition, request, plan, stabilizers, generator, on_step, feedback, ranks)
    return None if latents is None else model.decode(latents, condition)


def request_of(settings: GenerateSettings, image: np.ndarray) -> Request:
    return Request(
        image=image,
        prompt=settings.prompt,
        num_frames=settings.frames,
        height=settings.height,
        width=settings.width,
        guidance=settings.guidance,
    )


def predict_windows(device: torch.device) -> None:
    """A rank other than 0 under torchrun: take rank 0's job (its settings and reference image), load
    the model and predict this rank's windows of every step. Writes nothing."""
    ranks = current_ranks()
    job = ranks.share_job()
    if job is None:  # rank 0 had nothing to generate (cached, or it stopped before sampling)
        ranks.finish()
        return
    settings, image = job
    generate(load_generator(settings, device), request_of(settings, image), settings, ranks=ranks)


def load_generator(settings: GenerateSettings, device: torch.device) -> VideoModel:
    """generate.model on `device`, at generate.dtype (auto: the adapter's precision on CUDA)."""
    return load_model(
        settings.model, device, resolve_dtype(settings.dtype, device, adapter_class(settings.model).cuda_dtype)
    )


def feedback_loop(
    model: VideoModel,
    request: Request,
    settings: GenerateSettings,
    device: torch.device,
    given: list[Camera] | None = None,
) -> FeedbackLoop | None:
    """The feedback stabilizer's loop when generate.feedback is on, with the frames' cameras: the
    model's, `given` (--cameras, as `given_cameras` reads them), or else estimated with COLMAP at the
    first acting step."""
    feedback = Feedback.of(settings)
    if feedback.mode == "off":
        return None
    if not model.supports_feedback:
        raise StageError(
            f"generate.feedback = {feedback.mode}: not supported for {type(model).__name__} yet "
            "(it needs a differentiable decode and encode); use the embedded model, SVD, CogVideoX "
            "or Wan"
        )
    cameras = model.cameras(request) or given
    return FeedbackLoop(model, cameras, feedback, settings.steps, device, settings.seed)


def given_cameras(settings: GenerateSettings) -> list[Camera] | None:
    """generate.cameras, camera i for frame i; one per frame, or a UserError."""
    if not settings.cameras:
        return None
    path = Path(settings.cameras)
    if not path.is_file():
        raise UserError(f"{path}: no such cameras file (generate.cameras / --cameras)")
    cameras = read_cameras(path)
    if sorted(cameras) != list(range(settings.frames)):
        raise UserError(
            f"{path}: has cameras for {len(cameras)} frames; generate.frames = {settings.frames} needs "
            f"one for each of frames 0..{settings.frames - 1}"
        )
    return [camera for _, camera in sorted(cameras.items())]


def generate_video(settings: GenerateSettings, out_dir: Path, device: torch.device) -> StageOutput:
    image = read_reference(Path(settings.image))
    anchor_latents(settings, settings.frames, settings.frames)  # bad anchor lists fail before the model loads
    check_memory(settings, device)
    given = given_cameras(settings)
    ranks = current_ranks()
    if ranks.spread:
        ranks.share_job((settings, image))
    started = time.time()
    model = load_generator(settings, device)
    loaded = time.time()
    request = request_of(settings, image)
    loop = feedback_loop(model, request, settings, device, given)
    with progress("generate", settings.steps) as advance:
        try:
            frames = generate(model, request, settings, lambda done, total: advance(), loop, ranks)
        except Exception as error:
            if ranks.spread and lost_peer(error):
                raise StageError(
                    "generate: another rank stopped, so every rank stops (its own output says why)"
                ) from error
            raise
    sampled = time.time()

    metrics = video_metrics(list(frames))
    if ranks.spread:
        metrics["ranks"] = ranks.world
    cameras = model.cameras(request)
    if loop is not None:
        metrics["feedback"] = loop.history
        metrics["feedback_cameras"] = "model" if cameras else "estimated" if loop.estimated else "given"
        cameras = cameras or given  # the frames were pulled toward the given cameras: keep them
    graded = cameras or (loop.cameras if loop is not None else None)  # estimated ones grade their own frames
    if graded:
        height, width = frames.shape[1:3]
        metrics.update(epipolar_error(frames[: len(graded)], *stacked([c.resized(width, height) for c in graded])))
    outputs = write_video(out_dir, frames, settings.fps, cameras, metrics)
    if loop is not None and loop.trainer is not None:  # the loop's final 3D state
        save_ply(loop.trainer.splats, out_dir / SPLATS_FILE)
        outputs.append(SPLATS_FILE)
    log.info("generated %d frames of %dx%d", len(frames), frames.shape[2], frames.shape[1])
    return StageOutput(outputs=outputs, metrics=metrics, timings={"load": loaded - started, "sample": sampled - loaded})
