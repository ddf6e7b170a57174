"""The one small interface the sampler needs from a video diffusion model.

An adapter wraps a model family: it encodes the conditioning once, predicts the model output for
one window of latent frames at one timestep (classifier-free guidance applied as the model
expects), decodes latents to frames, and names its self-attention layers for the stabilizing
processors. The sampler owns the windows, the noise and the scheduler steps.

Adding a family is one module here (its adapter and its random-weight test model) and one row in
`adapters.ADAPTERS`, keyed by the diffusers pipeline class it wraps. What an adapter must do:

- `__init__`: call `super().__init__()`, set `window`, `scheduler`, `device` and `dtype`, and call
  `install_stabilizers` on each denoiser (the network `denoise` calls at every step).
- `prepare`, `latent_frames`, `latent_shape`, `denoise`, `decode` and `layout_of` (below).
- `denoise` calls its denoisers the same number of times, in the same order, in every call of a
  step (the anchors' pass and every window's): each call keeps its own anchors and cache.
  It sets no attention state: `predict` and `install_stabilizers` do.
- Guidance: `denoise` applies it through `classifier_free` (or, for another kind of guidance, calls
  `record_correction` with what it adds to the conditional prediction), and `guides` says when it
  does: `generate.feedback=gradient_guided` sizes its step by that correction. While
  `recording_corrections` is on, `denoise` records the correction its guidance would apply at this
  step even where it applies none (the embedded model below its `guidance_from_t`), and returns what
  it returns otherwise.
- Class attributes where the default does not fit: `frame_dim`, `cuda_dtype` (the precision of
  `--dtype auto` on CUDA), `supports_feedback` (with `decode_frames` and `encode_frames`).
- `load` when loading takes more than `from_pretrained` (casting a component to another precision),
  and `tiny`, the random-weight model the tests run and `--model tiny-<module>` names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from vid3d.cameras import Camera

from ..attention import AttentionState, Layout, install_processors, track_passes


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
    """A video diffusion model behind the sampler's interface."""

    frame_dim: int = 1  # latents are [batch, frames, channels, height, width]
    cuda_dtype: ClassVar[torch.dtype] = torch.float16  # the precision the model computes in on CUDA by default
    supports_feedback: ClassVar[bool] = False  # decode_frames and encode_frames are implemented
    window: int  # latent frames the model denoises at once
    scheduler: Any  # a diffusers scheduler, configured for this model
    device: torch.device
    dtype: torch.dtype  # of the latents

    def __init__(self) -> None:
        self.attention = AttentionState()
        self._denoisers = 0
        self.guidance_corrections: list[torch.Tensor] | None = None  # the windows' while recording_corrections

    @contextmanager
    def recording_corrections(self, on: bool = True) -> Iterator[list[torch.Tensor] | None]:
        """Inside (when `on`), every `denoise` appends its window's guidance correction (shaped like
        its output) to the list this yields; None when off."""
        self.guidance_corrections = [] if on else None
        try:
            yield self.guidance_corrections
        finally:
            self.guidance_corrections = None

    def record_correction(self, correction: torch.Tensor) -> None:
        """What the guidance adds to the conditional prediction, kept while recording_corrections is on."""
        if self.guidance_corrections is not None:
            self.guidance_corrections.append(correction)

    def classifier_free(self, uncond: torch.Tensor, cond: torch.Tensor, scale) -> torch.Tensor:
        """Classifier-free guidance `uncond + scale * (cond - uncond)`; its correction to `cond` is
        `(scale - 1) * (cond - uncond)`. `scale`: a number or a tensor broadcast over the outputs."""
        self.record_correction((scale - 1) * (cond - uncond))
        return uncond + scale * (cond - uncond)

    def guides(self, condition: Any) -> bool:
        """Whether `denoise` applies guidance with `condition` (and so records a correction)."""
        return False

    @classmethod
    def load(cls, spec: str, device: torch.device, dtype: torch.dtype) -> VideoModel:
        """The model in `spec`, a diffusers pipeline folder or a Hugging Face id in the local cache,
        loaded in `dtype` onto `device`."""
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=dtype, local_files_only=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe)

    @classmethod
    def tiny(cls, device: torch.device) -> VideoModel:
        """A random-weight instance small enough for the tests (its videos are noise)."""
        raise NotImplementedError(f"{cls.__name__} has no tiny test model")

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

    def predict(self, latents: torch.Tensor, t: torch.Tensor, condition: Any, frames: torch.Tensor) -> torch.Tensor:
        """Model output for a window: `latents` are the scheduler-scaled latents of the video
        frames `frames` (indices into the whole video), shaped like the window. Adapters implement
        `denoise`; this starts the prediction's attention state first."""
        self.attention.begin_prediction()
        return self.denoise(latents, t, condition, frames)

    @abstractmethod
    def denoise(self, latents: torch.Tensor, t: torch.Tensor, condition: Any, frames: torch.Tensor) -> torch.Tensor:
        """`predict`'s model output, from the denoisers: the output the scheduler steps (guidance applied)."""

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
        """Swap the stabilizing processors into `denoiser`'s layers `layout_of` names, and have every call
        of it set the attention state (its batch's videos, which call of the prediction it is)."""
        track_passes(denoiser, self.attention, self._denoisers)
        self._denoisers += 1
        return install_processors(denoiser, self.attention, self.layout_of)
