"""Overlapping temporal windows over a long video, their fusion weights, and one noise field.

A video longer than the model's window is denoised as overlapping windows. At each step every
window's model output is fused frame by frame with weights (flat, pyramid or gaussian) before ONE
scheduler step over the whole latent. Noise is drawn once for the whole video and sliced per window
(covariance-preserving noise), so a frame sees the same noise in every window that holds it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

Weighting = Literal["flat", "pyramid", "gaussian"]


def window_starts(num_frames: int, window: int, stride: int, circular: bool = False) -> list[int]:
    """First frame of each window. Open videos: the last window ends on the last frame. Circular
    videos (a closed orbit): windows run past the end and wrap to the start."""
    if window <= 0 or stride <= 0:
        raise ValueError("window and stride must be positive")
    if num_frames <= window and not circular:
        return [0]
    if circular:
        return list(range(0, num_frames, stride))
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def windows(num_frames: int, window: int, stride: int, circular: bool = False) -> list[torch.Tensor]:
    """Frame indices [window] of each window (modulo num_frames when circular)."""
    size = min(window, num_frames)
    return [
        torch.arange(start, start + size) % num_frames for start in window_starts(num_frames, size, stride, circular)
    ]


def frame_weights(window: int, kind: Weighting = "pyramid") -> torch.Tensor:
    """Weight of each frame position within a window: high in the middle for pyramid and gaussian,
    so a frame is decided mostly by the window where it has most context on both sides."""
    position = torch.arange(window, dtype=torch.float64)
    if kind == "flat":
        weights = torch.ones(window, dtype=torch.float64)
    elif kind == "pyramid":
        weights = torch.minimum(position + 1, window - position)
    elif kind == "gaussian":
        centre, sigma = (window - 1) / 2, max(window / 4, 1.0)
        weights = torch.exp(-0.5 * ((position - centre) / sigma) ** 2)
    else:
        raise ValueError(f"unknown weighting {kind!r}: flat, pyramid or gaussian")
    return weights / weights.max()


def fuse(
    outputs: list[torch.Tensor],
    frame_sets: list[torch.Tensor],
    num_frames: int,
    frame_dim: int,
    kind: Weighting = "pyramid",
) -> torch.Tensor:
    """Weighted average, frame by frame, of the windows' outputs (each with `window` frames along
    `frame_dim`) into one tensor with `num_frames` frames; the weights of each frame sum to one.
    Weights are normalised before they are applied, so a frame held by one window is copied
    bit for bit."""
    first = outputs[0]
    device = first.device
    accumulate = torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype
    weights = [frame_weights(len(frames), kind).to(device) for frames in frame_sets]
    weight_sum = torch.zeros(num_frames, dtype=torch.float64, device=device)
    for frames, w in zip(frame_sets, weights):
        weight_sum.index_add_(0, frames.to(device), w)
    if (weight_sum == 0).any():
        raise ValueError("some frames are in no window")
    shape = list(first.shape)
    shape[frame_dim] = num_frames
    total = first.new_zeros(shape, dtype=accumulate)
    for output, frames, w in zip(outputs, frame_sets, weights):
        frames = frames.to(device)
        share = (w / weight_sum[frames]).to(accumulate)
        view = [1] * output.dim()
        view[frame_dim] = len(frames)
        total.index_add_(frame_dim, frames, output.to(accumulate) * share.view(view))
    return total.to(first.dtype)


def shared_noise(
    shape: tuple[int, ...],
    frame_dim: int,
    generator: torch.Generator,
    freenoise_window: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One noise field for the whole video. With `freenoise_window` = W > 0, frames beyond the
    first W reuse the first W frames' noise in a shuffled order (FreeNoise), which keeps long videos
    closer to what the model saw in training."""
    noise = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    num_frames = shape[frame_dim]
    if freenoise_window <= 0 or num_frames <= freenoise_window:
        return noise
    order = [torch.arange(freenoise_window)]
    for _ in range(math.ceil(num_frames / freenoise_window) - 1):
        order.append(torch.randperm(freenoise_window, generator=generator))
    source = torch.cat(order)[:num_frames].to(noise.device)
    return noise.index_select(frame_dim, source)
