"""The one small interface the sampler needs from a video diffusion model.

An adapter wraps a diffusers model family: it encodes the conditioning once, predicts the model
output for one window of latent frames at one timestep (classifier-free guidance applied as the
model expects), decodes latents to frames, and names its self-attention layers for the
stabilizing processors. The sampler owns the windows, the noise and the scheduler steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vid3d.cameras import Camera

from ..attention import AttentionState, Layout, install_processors


@dataclass
class Request:
    """What the user asked for."""

    image: np.ndarray  # reference image, uint8 [H, W, 3]
    prompt: str = ""
    num_frames: int = 48  # video frames
    height: int = 0  # 0: the model's default
    width: int = 0
    guidance: float = 0.0  # 0: the model's default
    orbit_degrees: float = 360.0  # camera-conditioned models: the azimuth the video sweeps


class VideoModel(ABC):
    """A diffusers video model behind the sampler's interface."""

    frame_dim: int = 1  # latents are [batch, frames, channels, height, width]
    window: int  # latent frames the model denoises at once
    scheduler: Any  # a diffusers scheduler, configured for this model
    device: torch.device
    dtype: torch.dtype

    def __init__(self) -> None:
        self.attention = AttentionState()

    @abstractmethod
    def prepare(self, request: Request, generator: torch.Generator) -> Any:
        """Encode the conditioning once (drawing any random numbers the model's own pipeline draws
        before its initial latents, in the same order)."""

    @abstractmethod
    def latent_shape(self, request: Request, num_latent_frames: int) -> tuple[int, ...]:
        """Shape of the whole video's latents."""

    @abstractmethod
    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for `num_frames` video frames (temporal compression)."""

    @abstractmethod
    def predict(self, latents: torch.Tensor, t: torch.Tensor, condition: Any, frames: torch.Tensor) -> torch.Tensor:
        """Model output for a window: `latents` are the scheduler-scaled latents of the video
        frames `frames` (indices into the whole video), shaped like the window."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, condition: Any) -> np.ndarray:
        """uint8 frames [F, H, W, 3] of the first video in `latents`."""

    @abstractmethod
    def layout_of(self, processor_name: str) -> Layout | None:
        """Which self-attention layers take the stabilizing processors, and their layout."""

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable decode for the feedback loop: latents [1, ...] with their frames along `frame_dim`
        -> frames [F, H, W, 3] in [0, 1] (a temporal VAE may decode more frames than the video has)."""
        raise NotImplementedError(f"{type(self).__name__} does not support generate.feedback yet")

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Inverse of decode_frames: frames [F, H, W, 3] in [0, 1] -> latents [1, ...] (frames along `frame_dim`)."""
        raise NotImplementedError(f"{type(self).__name__} does not support generate.feedback yet")

    def cameras(self, request: Request) -> list[Camera] | None:
        """Per-frame cameras for camera-conditioned models (written to generate/cameras.json)."""
        return None

    def install_stabilizers(self, denoiser: torch.nn.Module) -> list[str]:
        return install_processors(denoiser, self.attention, self.layout_of)
