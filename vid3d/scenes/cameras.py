"""Pinhole cameras in the OpenCV convention (x right, y down, z forward), as batches of arrays for
rendering the procedural scenes; `Cameras.as_cameras` gives vid3d's camera type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vid3d.cameras import Camera


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """3x3 pinhole K with horizontal field of view `fov_deg`, square pixels and
    the principal point at the image centre (pixel centres sit at +0.5)."""
    fx = 0.5 * width / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]])


def look_at_rotation(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation whose columns are the camera x (right), y (down), z (forward) axes."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along `up`: any right vector will do
        right = np.cross(forward, [0.0, 1.0, 0.0] if abs(forward[1]) < 0.9 else [1.0, 0.0, 0.0])
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


@dataclass(eq=False)
class Cameras:
    K: np.ndarray  # (N,3,3) float64
    cam_to_world: np.ndarray  # (N,4,4) float64, OpenCV axes
    width: int
    height: int

    def __post_init__(self):
        self.K = np.asarray(self.K, dtype=np.float64).reshape(-1, 3, 3)
        self.cam_to_world = np.asarray(self.cam_to_world, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.K) != len(self.cam_to_world):
            raise ValueError("K and cam_to_world must have the same length")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return len(self.cam_to_world)

    def __getitem__(self, idx) -> Cameras:
        """Index with a slice, an index array or an int (an int gives a Cameras of length 1)."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        return Cameras(self.K[idx], self.cam_to_world[idx], self.width, self.height)

    def as_cameras(self) -> list[Camera]:
        """vid3d's camera type, one per camera."""
        return [Camera(cam_to_world, K, self.width, self.height) for cam_to_world, K in zip(self.cam_to_world, self.K)]

    def world_to_cam(self) -> np.ndarray:
        R = self.cam_to_world[:, :3, :3]
        t = self.cam_to_world[:, :3, 3]
        out = np.zeros_like(self.cam_to_world)
        out[:, :3, :3] = R.transpose(0, 2, 1)
        out[:, :3, 3] = -np.einsum("nji,nj->ni", R, t)
        out[:, 3, 3] = 1.0
        return out

    def centers(self) -> np.ndarray:
        return self.cam_to_world[:, :3, 3].copy()

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (P,3) -> pixel coordinates (N,P,2) and camera z-depth (N,P)."""
        w2c = self.world_to_cam()
        cam = np.einsum("nij,pj->npi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        pix = np.einsum("nij,npj->npi", self.K, cam)[..., :2] / z[..., None]
        return pix, z

    def backproject(self, depth: np.ndarray) -> np.ndarray:
        """z-depth maps (N,H,W) -> world points (N,H,W,3) at the pixel centres."""
        v, u = np.mgrid[0 : self.height, 0 : self.width] + 0.5
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # (H,W,3)
        rays = np.einsum("nij,hwj->nhwi", np.linalg.inv(self.K), pix)
        cam = rays * np.asarray(depth, dtype=np.float64)[..., None]
        R = self.cam_to_world[:, :3, :3]
        return np.einsum("nij,nhwj->nhwi", R, cam) + self.cam_to_world[:, None, None, :3, 3]

    @classmethod
    def from_look_at(
        cls,
        eyes,
        targets,
        width: int,
        height: int,
        fov_deg: float = 50.0,
        up=(0.0, 0.0, 1.0),
    ) -> Cameras:
        eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
        targets = np.broadcast_to(np.asarray(targets, dtype=np.float64), eyes.shape)
        up = np.asarray(up, dtype=np.float64)
        cam_to_world = np.tile(np.eye(4), (len(eyes), 1, 1))
        for i, (eye, target) in enumerate(zip(eyes, targets)):
            cam_to_world[i, :3, :3] = look_at_rotation(eye, target, up)
            cam_to_world[i, :3, 3] = eye
        K = np.tile(intrinsics(width, height, fov_deg), (len(eyes), 1, 1))
        return cls(K, cam_to_world, width, height)


def orbit_cameras(
    n: int,
    radius: float = 3.5,
    elevation_deg: float = 25.0,
    width: int = 256,
    height: int = 256,
    fov_deg: float = 50.0,
    look_at=(0.0, 0.0, 0.4),
    start_deg: float = 0.0,
    arc_deg: float = 360.0,
    endpoint: bool = False,
) -> Cameras:
    """`n` cameras evenly spaced in azimuth on a circle around the vertical axis through
    `look_at`, each at distance `radius` from `look_at` and `elevation_deg` above it, all
    looking at `look_at`. Azimuth 0 is the +x direction; angles increase counter-clockwise."""
    look_at = np.asarray(look_at, dtype=np.float64)
    azimuth = np.radians(start_deg + np.linspace(0.0, arc_deg, n, endpoint=endpoint))
    elevation = np.radians(elevation_deg)
    offsets = np.stack(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.cos(elevation) * np.sin(azimuth),
            np.full_like(azimuth, np.sin(elevation)),
        ],
        axis=1,
    )
    eyes = look_at + radius * offsets
    return Cameras.from_look_at(eyes, look_at, width, height, fov_deg)
