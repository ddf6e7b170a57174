"""The embedded orbit model: a small latent video diffusion model that turns a reference image into
a turntable orbit around it, on a CPU (see docs/model.md and vid3d/generate/model/)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler

from vid3d.cameras import Camera
from vid3d.scenes import orbit_cameras

from ..model import RIG, SIZE, WEIGHTS
from ..model.autoencoder import OrbitAutoencoder
from ..model.network import OrbitTransformer, spatial_layout
from .base import Request, VideoModel

GUIDANCE = 2.0  # autoguidance scale when the weights folder has a guide/ transformer (docs/model.md)
# Guidance only at high noise, where the layout and the motion are decided: guiding the later steps
# too sharpened details that disagreed between views and cost 3D consistency (docs/model.md).
GUIDANCE_FROM_T = 700


def flushing_denormals(method):
    """`method` with denormals flushed to zero (the small model makes them: 20x slower on CPUs), the
    flag set back off after: it is the thread's, and scipy's cKDTree (the Gaussians' first sizes,
    the 3D measures) recursed without end on some point sets with it on, in the same process."""

    @functools.wraps(method)
    def flushing(*args, **kwargs):
        torch.set_flush_denormal(True)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_flush_denormal(False)

    return flushing


@dataclass
class OrbitCondition:
    reference: torch.Tensor  # scaled reference latents [1, C, 16, 16]
    azimuth: torch.Tensor  # [num_frames] radians relative to the reference
    guidance: float  # 1: the transformer alone


class OrbitVideoModel(VideoModel):
    cuda_dtype = torch.float32  # the small model computes in float32 on every device
    supports_feedback = True

    def __init__(
        self,
        transformer: OrbitTransformer,
        autoencoder: OrbitAutoencoder,
        scheduler,
        window: int,
        device: torch.device | str = "cpu",
        guide: OrbitTransformer | None = None,
    ):
        super().__init__()
        self.transformer, self.autoencoder, self.scheduler = transformer.eval(), autoencoder.eval(), scheduler
        self.guide = guide.eval() if guide is not None else None
        self.window = window
        self.guidance_from_t = GUIDANCE_FROM_T
        self.device, self.dtype = torch.device(device), torch.float32
        self.install_stabilizers(self.transformer)

    @classmethod
    def load(
        cls, path: str | Path | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> OrbitVideoModel:
        """The weights folder written by scripts/train_model.py; default: the shipped weights. In float32
        whatever `dtype` says."""
        import json

        path = Path(path) if path else WEIGHTS
        transformer = OrbitTransformer.from_pretrained(path / "transformer").to(device)
        autoencoder = OrbitAutoencoder.from_pretrained(path / "autoencoder").to(device)
        scheduler = DDIMScheduler.from_pretrained(path)
        window = int(json.loads((path / "settings.json").read_text())["window"])
        guide = None
        if (path / "guide").is_dir():
            guide = OrbitTransformer.from_pretrained(path / "guide", torch_dtype=torch.float32).to(device)
        return cls(transformer, autoencoder, scheduler, window, device, guide)

    @classmethod
    def tiny(cls, device: torch.device | str = "cpu") -> OrbitVideoModel:
        """Random weights, none of them zero: a new OrbitTransformer zero-initialises its modulations and
        output layers, which would leave its attention without effect on the output."""
        torch.manual_seed(0)
        transformer = OrbitTransformer(dim=32, depth=1, heads=2, **RIG)
        with torch.no_grad():
            for parameter in transformer.parameters():
                parameter.normal_(0, 0.2)
        scheduler = DDIMScheduler(prediction_type="sample")
        return cls(transformer.to(device), OrbitAutoencoder().to(device), scheduler, window=4, device=device)

    @property
    def scaling(self) -> float:
        return float(self.autoencoder.config.scaling_factor)

    def azimuths(self, request: Request) -> np.ndarray:
        """Degrees of each frame relative to the reference, counter-clockwise; frame 0 = the reference."""
        return np.arange(request.num_frames) * request.orbit_degrees / request.num_frames

    @torch.no_grad()
    @flushing_denormals
    def prepare(self, request: Request, generator: torch.Generator) -> OrbitCondition:
        image = to_model_image(request.image)
        x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 127.5 - 1
        reference = self.autoencoder.encode(x.to(self.device)) * self.scaling
        azimuth = torch.from_numpy(np.radians(self.azimuths(request))).float().to(self.device)
        guidance = (request.guidance or GUIDANCE) if self.guide is not None else 1.0
        return OrbitCondition(reference, azimuth, guidance)

    def latent_frames(self, num_frames: int) -> int:
        return num_frames

    def latent_shape(self, request: Request, num_latent_frames: int) -> tuple[int, ...]:
        c = self.autoencoder.config.latent_channels
        return (1, num_latent_frames, c, SIZE // 4, SIZE // 4)

    @torch.no_grad()
    @flushing_denormals
    def denoise(self, latents, t, condition: OrbitCondition, frames):
        videos = latents.shape[0]
        azimuth = condition.azimuth[frames.to(condition.azimuth.device)][None].expand(videos, -1)
        reference = condition.reference.expand(videos, -1, -1, -1)
        prediction = self.transformer(latents, t, reference, azimuth)
        guiding = self.guides(condition) and float(t) >= self.guidance_from_t
        # While recording, the correction the guidance would apply at this t even where it applies
        # none: the guide has no stabilizing processors, so its extra call counts in no pass.
        recording = self.guides(condition) and self.guidance_corrections is not None
        if not (guiding or recording):
            return prediction
        # Autoguidance (Karras et al. 2024): extrapolate away from a weaker model's prediction, as
        # classifier-free guidance does from the unconditional one.
        weaker = self.guide(latents, t, reference, azimuth)
        self.record_correction((condition.guidance - 1) * (prediction - weaker))
        return weaker + condition.guidance * (prediction - weaker) if guiding else prediction

    def guides(self, condition: OrbitCondition) -> bool:
        return condition.guidance != 1.0

    @torch.no_grad()
    @flushing_denormals
    def decode(self, latents, condition) -> np.ndarray:
        images = self.autoencoder.decode(latents[0] / self.scaling)
        return ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    @flushing_denormals
    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.autoencoder.decode(latents[0] / self.scaling)
        return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)

    @flushing_denormals
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return (self.autoencoder.encode(frames.permute(0, 3, 1, 2) * 2 - 1) * self.scaling)[None]

    def layout_of(self, processor_name: str):
        return spatial_layout(processor_name)

    def cameras(self, request: Request) -> list[Camera]:
        cfg = self.transformer.config
        rig = {
            "radius": cfg.radius,
            "elevation_deg": cfg.elevation_deg,
            "fov_deg": cfg.fov_deg,
            "look_at": tuple(cfg.look_at),
        }
        cams = orbit_cameras(
            request.num_frames, width=SIZE, height=SIZE, start_deg=0.0, arc_deg=request.orbit_degrees, **rig
        )
        return cams.as_cameras()


def to_model_image(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> the centre square resized to 64x64 (area filter when shrinking)."""
    image = np.asarray(image)[..., :3]
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(image[top : top + side, left : left + side])
    if side == SIZE:
        return square
    interpolation = cv2.INTER_AREA if side > SIZE else cv2.INTER_CUBIC
    return cv2.resize(square, (SIZE, SIZE), interpolation=interpolation)
