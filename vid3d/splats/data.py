"""The poses/ dataset as tensors: images, world-to-camera matrices and intrinsics.

Training runs in the world frame of poses/transforms.json, so the Gaussians, and everything
exported from them, line up with the cameras a user sees in that file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from vid3d.poses.dataset import read_dataset


@dataclass
class Dataset:
    names: list[str]  # image file names, in transforms.json order
    images: torch.Tensor  # [N, H, W, 3] float in [0, 1]
    viewmats: torch.Tensor  # [N, 4, 4] world-to-camera, OpenCV axes
    Ks: torch.Tensor  # [N, 3, 3]
    train: list[int]
    test: list[int]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    def downscaled(self, factor: int) -> Dataset:
        """The same frames at 1/factor of the size (area filter), intrinsics scaled to match."""
        height, width = max(1, self.height // factor), max(1, self.width // factor)
        images = F.interpolate(self.images.permute(0, 3, 1, 2), size=(height, width), mode="area")
        Ks = self.Ks.clone()
        Ks[:, 0] *= width / self.width
        Ks[:, 1] *= height / self.height
        return replace(self, images=images.permute(0, 2, 3, 1).contiguous(), Ks=Ks)

    def scene_scale(self) -> float:
        """Largest distance of a camera from the cameras' centroid (gsplat's scene_scale)."""
        centres = torch.linalg.inv(self.viewmats)[:, :3, 3]
        return float((centres - centres.mean(0)).norm(dim=1).max())


def load_dataset(poses_dir: Path, test_every: int, device: torch.device | str = "cpu", max_side: int = 0) -> Dataset:
    """poses/ with its images; every `test_every`-th frame is held out (0: none). Images larger than
    `max_side` (0: no limit) are resized once, with an area filter, and their intrinsics with them."""
    poses = read_dataset(poses_dir)
    n = len(poses.names)
    test = list(range(0, n, test_every)) if test_every else []
    size = training_size(poses.width, poses.height, max_side)
    images = np.stack([resize_area(iio.imread(path)[..., :3], size) for path in poses.paths])
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=device)
    return Dataset(
        names=poses.names,
        images=as_tensor(images) / 255.0,
        viewmats=as_tensor(np.linalg.inv(poses.cam_to_world)),
        Ks=as_tensor(scale_intrinsics(poses.Ks, size[0] / poses.width, size[1] / poses.height)),
        train=[i for i in range(n) if i not in test],
        test=test,
    )


def training_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longest side at most `max_side` (0: as they are), aspect kept."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] resized to (width, height) by averaging the pixels each new pixel covers."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = F.interpolate(pixels, size=(size[1], size[0]), mode="area")
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def scale_intrinsics(Ks: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Intrinsics [N, 3, 3] for images resized by (scale_x, scale_y) (pixel edges stay on edges)."""
    scaled = np.array(Ks, dtype=np.float64, copy=True)
    scaled[:, 0] *= scale_x
    scaled[:, 1] *= scale_y
    return scaled


def load_points(poses_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sparse point cloud (positions, colours in [0, 1]) that initialises the Gaussians."""
    xyz, rgb = read_dataset(poses_dir).points()
    return xyz, rgb.astype(np.float32) / 255.0
