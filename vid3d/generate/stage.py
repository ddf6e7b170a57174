"""The generate stage: a reference image to generate/frames/, video.mp4, metrics.json, cameras.json."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from vid3d.config import GenerateSettings
from vid3d.errors import UserError
from vid3d.metrics.video import video_metrics
from vid3d.project import StageOutput
from vid3d.ui import log, progress

from .adapters import Request, VideoModel, load_model
from .sampler import Plan, Stabilizers, sample, use_scheduler


def read_image(path: Path) -> np.ndarray:
    """The reference image as uint8 RGB."""
    if not path.is_file():
        raise UserError(f"{path}: no such image; pass a PNG or JPEG to --image")
    try:
        image = iio.imread(path)
    except Exception:
        raise UserError(f"{path}: not a readable image; pass a PNG or JPEG to --image") from None
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise UserError(f"{path}: expected an RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (image / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def anchor_latents(settings: GenerateSettings, num_frames: int, num_latent: int) -> tuple[int, ...]:
    """Latent frames used as anchors: listed video frames, or the first and every Nth."""
    if settings.anchor_frames.strip():
        try:
            frames = [int(part) for part in settings.anchor_frames.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"generate.anchor_frames = {settings.anchor_frames!r}: expected comma-separated "
                            "frame numbers, e.g. 0,24") from None
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

    folder = Path(spec) if spec else _embedded_weights()
    if folder is None or not folder.is_dir():
        return spec
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    listing = ",".join(f"{p.relative_to(folder)}:{file_fingerprint(p)}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _embedded_weights() -> Path | None:
    path = Path(__file__).resolve().parents[1] / "model" / "weights"
    return path if path.is_dir() else None


def resolve_dtype(name: str, device: torch.device, model: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if "cogvideo" in model.lower() else torch.float16


def plan_of(settings: GenerateSettings) -> Plan:
    return Plan(steps=settings.steps, window=settings.window, stride=settings.stride, weighting=settings.weighting,
                loop=settings.loop, scheduler=settings.scheduler)


def stabilizers_of(settings: GenerateSettings, num_frames: int, num_latent: int) -> Stabilizers:
    return Stabilizers(shared_noise=settings.shared_noise, freenoise=settings.freenoise,
                       anchors=anchor_latents(settings, num_frames, num_latent),
                       kv_cache_until=settings.kv_cache_until, kv_decay=settings.kv_decay)


def generate(model: VideoModel, request: Request, settings: GenerateSettings, on_step=None) -> np.ndarray:
    """uint8 frames [F, H, W, 3] for `request` with the settings' plan and stabilizers."""
    use_scheduler(model, settings.scheduler)
    num_latent = model.latent_frames(request.num_frames)
    generator = torch.Generator("cpu").manual_seed(settings.seed)  # the same noise on every device
    condition = model.prepare(request, generator)
    latents = sample(model, condition, request, plan_of(settings),
                     stabilizers_of(settings, request.num_frames, num_latent), generator, on_step)
    return model.decode(latents, condition)


def generate_video(settings: GenerateSettings, out_dir: Path, device: torch.device) -> StageOutput:
    image = read_image(Path(settings.image))
    anchor_latents(settings, settings.frames, settings.frames)  # bad anchor lists fail before the model loads
    started = time.time()
    model = load_model(settings.model, device, resolve_dtype(settings.dtype, device, settings.model))
    loaded = time.time()
    request = Request(image=image, prompt=settings.prompt, num_frames=settings.frames, height=settings.height,
                      width=settings.width, guidance=settings.guidance)
    with progress("generate", settings.steps) as advance:
        frames = generate(model, request, settings, on_step=lambda done, total: advance())
    sampled = time.time()

    frames_dir = out_dir / "frames"
    frames_dir.mkdir()
    for index, frame in enumerate(frames):
        iio.imwrite(frames_dir / f"{index:05d}.png", frame)
    iio.imwrite(out_dir / "video.mp4", frames, fps=settings.fps, codec="libx264", macro_block_size=1)
    outputs = ["video.mp4", "frames/", "metrics.json"]
    cameras = model.cameras(request)
    if cameras:
        (out_dir / "cameras.json").write_text(json.dumps({"frames": cameras}, indent=1))
        outputs.append("cameras.json")
    metrics = video_metrics(list(frames))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info("generated %d frames of %dx%d", len(frames), frames.shape[2], frames.shape[1])
    return StageOutput(outputs=outputs, metrics=metrics,
                       timings={"load": loaded - started, "sample": sampled - loaded})
