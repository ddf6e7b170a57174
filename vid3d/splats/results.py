"""splats/' results besides the Gaussians, and their readers: history.csv (the training curves,
one row per step), renders/ (each held-out frame rendered, beside its original), metrics.json and
ckpt/ (the final checkpoint)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ("step", "loss", "psnr", "gaussians")  # psnr: of the step's training frame
RENDERS_DIR = "renders"
METRICS_FILE = "metrics.json"  # held-out PSNR and SSIM, the training's figures, the held-out frames
CHECKPOINT_DIR = "ckpt"


def write_history(path: Path, rows: list[tuple[int, float, float, int]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows((step, f"{loss:.6g}", f"{psnr:.4f}", gaussians) for step, loss, psnr, gaussians in rows)


def read_history(splats_dir: Path) -> dict[str, np.ndarray] | None:
    """Each column of history.csv as an array; None when the folder has none (trained before it existed)."""
    path = splats_dir / HISTORY_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {name: np.array([float(row[name]) for row in rows]) for name in HISTORY_COLUMNS}


@dataclass
class HeldOutRender:
    name: str  # the frame's image name in poses/images/
    render: np.ndarray  # uint8 [H, W, 3]
    original: np.ndarray  # uint8 [H, W, 3]

    @property
    def psnr(self) -> float:
        """Of the 8-bit images as saved (within a few hundredths of a dB of the float one in metrics.json)."""
        mse = np.mean((self.render.astype(np.float64) - self.original.astype(np.float64)) ** 2) / 255.0**2
        return float(-10 * np.log10(max(mse, 1e-10)))


def read_held_out_renders(splats_dir: Path) -> list[HeldOutRender]:
    """renders/: the render on the left half of each image, the original on the right."""
    renders = []
    for path in sorted(p for p in (splats_dir / RENDERS_DIR).iterdir() if p.is_file()):
        image = iio.imread(path)[..., :3]
        half = image.shape[1] // 2
        renders.append(HeldOutRender(path.name, image[:, :half], image[:, half:]))
    return renders
