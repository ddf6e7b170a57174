"""The poses/ dataset as tensors: images, world-to-camera matrices and intrinsics.

Training runs in the world frame of poses/transforms.json, so the Gaussians, and everything
exported from them, line up with the cameras a user sees in that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from plyfile import PlyData

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


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
    """Read transforms.json and its images; every `test_every`-th frame is held out (0: none)."""
    meta = json.loads((poses_dir / "transforms.json").read_text())
    names, images, viewmats, Ks = [], [], [], []
    for frame in meta["frames"]:
        intrinsics = {**meta, **frame}  # per-frame intrinsics override shared ones
        names.append(Path(frame["file_path"]).name)
        images.append(iio.imread(poses_dir / frame["file_path"])[..., :3])
        cam_to_world = np.asarray(frame["transform_matrix"]) @ OPENGL_TO_OPENCV
        viewmats.append(np.linalg.inv(cam_to_world))
        Ks.append([[intrinsics["fl_x"], 0, intrinsics["cx"]], [0, intrinsics["fl_y"], intrinsics["cy"]], [0, 0, 1]])
    n = len(names)
    test = list(range(0, n, test_every)) if test_every else []
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=device)
    return Dataset(names=names, images=as_tensor(np.stack(images)) / 255.0, viewmats=as_tensor(viewmats),
                   Ks=as_tensor(Ks), train=[i for i in range(n) if i not in test], test=test)


def load_points(poses_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sparse point cloud (positions, colours in [0, 1]) that initialises the Gaussians."""
    meta = json.loads((poses_dir / "transforms.json").read_text())
    vertex = PlyData.read(str(poses_dir / meta.get("ply_file_path", "sparse_pc.ply")))["vertex"]
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.float32) / 255.0
    return xyz, rgb
