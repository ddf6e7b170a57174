"""The poses/ dataset as tensors: images, world-to-camera matrices and intrinsics.

Training runs in the world frame of poses/transforms.json, so the Gaussians, and everything
exported from them, line up with the cameras a user sees in that file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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

    def scene_scale(self) -> float:
        """Largest distance of a camera from the cameras' centroid (gsplat's scene_scale)."""
        centres = torch.linalg.inv(self.viewmats)[:, :3, 3]
        return float((centres - centres.mean(0)).norm(dim=1).max())


def load_dataset(poses_dir: Path, test_every: int, device: torch.device | str = "cpu") -> Dataset:
    """poses/ with its images; every `test_every`-th frame is held out (0: none)."""
    poses = read_dataset(poses_dir)
    n = len(poses.names)
    test = list(range(0, n, test_every)) if test_every else []
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=device)
    return Dataset(names=poses.names, images=as_tensor(poses.images()) / 255.0,
                   viewmats=as_tensor(np.linalg.inv(poses.cam_to_world)), Ks=as_tensor(poses.Ks),
                   train=[i for i in range(n) if i not in test], test=test)


def load_points(poses_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sparse point cloud (positions, colours in [0, 1]) that initialises the Gaussians."""
    xyz, rgb = read_dataset(poses_dir).points()
    return xyz, rgb.astype(np.float32) / 255.0
