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

from vid3d.cameras import Camera, scale_intrinsics, stacked
from vid3d.poses.dataset import read_dataset


@dataclass
class Dataset:
    """The training frames and their cameras as tensors on the training device; `of_cameras` and
    `cameras` convert from and to vid3d's cameras."""

    names: list[str]  # image file names, in transforms.json order
    images: torch.Tensor  # [N, H, W, 3] float in [0, 1]
    viewmats: torch.Tensor  # [N, 4, 4] world-to-camera, OpenCV axes
    Ks: torch.Tensor  # [N, 3, 3]
    train: list[int]
    test: list[int]

    @classmethod
    def of_cameras(
        cls, names: list[str], images: torch.Tensor, cameras: list[Camera], train: list[int], test: list[int]
    ) -> Dataset:
        """`images` [N, H, W, 3] in [0, 1] seen by `cameras` (resized to the images' size)."""
        height, width = images.shape[1:3]
        cam_to_world, Ks = stacked([camera.resized(width, height) for camera in cameras])
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float32, device=images.device)
        return cls(names, images, as_tensor(np.linalg.inv(cam_to_world)), as_tensor(Ks), train, test)

    def cameras(self) -> list[Camera]:
        """vid3d's cameras of the frames (float64 of the tensors' float32)."""
        cam_to_world = np.linalg.inv(self.viewmats.cpu().numpy().astype(np.float64))
        Ks = self.Ks.cpu().numpy().astype(np.float64)
        return [Camera(c, K, self.width, self.height) for c, K in zip(cam_to_world, Ks)]

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
        Ks = scale_intrinsics(self.Ks, width / self.width, height / self.height)
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
    return Dataset.of_cameras(
        names=poses.names,
        images=torch.tensor(images, dtype=torch.float32, device=device) / 255.0,
        cameras=poses.cameras(),
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


def load_points(poses_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sparse point cloud (positions, colours in [0, 1]) that initialises the Gaussians."""
    xyz, rgb = read_dataset(poses_dir).points()
    return xyz, rgb.astype(np.float32) / 255.0
