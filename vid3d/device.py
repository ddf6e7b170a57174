"""Where vid3d computes: the torch device a --device value names, and the precision of a model on it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vid3d.errors import UserError

if TYPE_CHECKING:  # torch loads on first use: a cached rerun on auto or cpu needs none of it (issue 24)
    import torch

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def check_device(device: str) -> None:
    """A --device value that names no device here is bad usage (checked before any work starts)."""
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise UserError(f"--device {device}: must be auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")


def resolve_device(device: str) -> torch.device:
    """auto: the first CUDA GPU when torch sees one, else the CPU."""
    import torch

    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device, preferred: torch.dtype) -> torch.dtype:
    """A --dtype value: a torch dtype's name, or auto: float32 on the CPU, on CUDA `preferred` (the
    precision the model's adapter names, `VideoModel.cuda_dtype`)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    return preferred if device.type == "cuda" else torch.float32
