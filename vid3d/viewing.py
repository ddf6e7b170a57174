"""What the viewer (vid3d.view) and the report (vid3d.report) share: Gaussians as a browser draws
them, and which way is up in a capture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vid3d.splats.model import SH_C0


@dataclass
class DrawnGaussians:
    centres: np.ndarray  # float32 [N, 3]
    covariances: np.ndarray  # float32 [N, 3, 3]
    colours: np.ndarray  # float32 [N, 3] in [0, 1], from the SH DC term (view-independent)
    opacities: np.ndarray  # float32 [N, 1] in [0, 1]


def drawn_gaussians(splats: torch.nn.ParameterDict) -> DrawnGaussians:
    """The trained parameters (log scales, wxyz quaternions, logit opacities, SH) as drawable values."""
    p = {name: value.detach().cpu().double().numpy() for name, value in splats.items()}
    colours = (0.5 + SH_C0 * p["sh0"][:, 0]).clip(0, 1)
    opacities = 1 / (1 + np.exp(-p["opacities"]))
    return DrawnGaussians(
        p["means"].astype(np.float32),
        covariances(np.exp(p["scales"]), p["quats"]).astype(np.float32),
        colours.astype(np.float32),
        opacities.reshape(-1, 1).astype(np.float32),
    )


def covariances(scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """[N, 3, 3] R S S R^T from scales [N, 3] and quaternions [N, 4] (wxyz, normalised here), as gsplat."""
    w, x, y, z = (quats / np.linalg.norm(quats, axis=1, keepdims=True)).T
    rotations = np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )
    scaled = rotations * scales[:, None, :]
    return scaled @ scaled.transpose(0, 2, 1)


def up_direction(cam_to_world: np.ndarray) -> np.ndarray:
    """The capture's up: the mean of the cameras' up axes (-y in OpenCV axes), as nerfstudio's
    "up" orientation; transforms.json's z when there are no cameras or they cancel out."""
    if len(cam_to_world) == 0:
        return np.array([0.0, 0.0, 1.0])
    up = -np.asarray(cam_to_world)[:, :3, 1].mean(axis=0)
    norm = np.linalg.norm(up)
    return up / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])


def horizontal_axes(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors that span the ground plane of `up`: (right, ahead), right-handed with up."""
    seed = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    right = seed - seed.dot(up) * up
    right /= np.linalg.norm(right)
    return right, np.cross(up, right)


def rotation_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    """A 3x3 rotation as a wxyz quaternion."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return np.array([w, x, y, z])
