"""Reprojection of the reference over a horizontal plane to other cameras of the turntable rig.

Every camera of the rig looks at a point on the vertical axis from the same elevation and
distance, so the camera at relative azimuth theta is the reference camera turned by theta about
that axis. A reference pixel that sees a point P of the plane z = h is seen by the other camera
where it sees Rz(theta) P. Sampling the reference there gives each frame a geometry-aware first
guess: over the ground (h = 0) exact for the ground and the objects' footprints, over a higher
plane exact for the parts of objects at that height. Pixels whose ray misses the plane (the sky)
keep their place (the sky only depends on the elevation of the ray).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vid3d.scenes.procedural import GROUND_HALF_SIZE  # the ground is a square of this half size


def reference_camera(radius: float, elevation_deg: float, look_at) -> tuple[torch.Tensor, torch.Tensor]:
    """Eye (3,) and camera-to-world rotation (3,3; columns right, down, forward) at azimuth 0."""
    e = math.radians(elevation_deg)
    target = torch.tensor(look_at, dtype=torch.float64)
    eye = target + radius * torch.tensor([math.cos(e), 0.0, math.sin(e)], dtype=torch.float64)
    forward = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    return eye, torch.stack([right, down, forward], dim=1)


def warp_grid(
    azimuth: torch.Tensor, size: int, radius: float, elevation_deg: float, fov_deg: float, look_at, height: float = 0.0
) -> torch.Tensor:
    """grid_sample grids [..., size, size, 2] (align_corners=False) that reproject the reference
    (azimuth 0) to the cameras at `azimuth` (radians, any shape) over the horizontal plane z = height
    (the ground by default; higher planes place the parts of objects at that height)."""
    eye, rotation = reference_camera(radius, elevation_deg, look_at)
    tan = math.tan(math.radians(fov_deg) / 2)
    centres = ((torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1) * tan
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    rays = torch.stack([x, y, torch.ones_like(x)], -1) @ rotation.T  # world directions [S, S, 3]
    t = (height - eye[2]) / rays[..., 2]
    on_plane = eye + t[..., None] * rays
    sees_plane = (t > 1e-6) & (on_plane[..., :2].abs().amax(-1) <= GROUND_HALF_SIZE)

    theta = azimuth.to(torch.float64)[..., None, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    px, py = on_plane[..., 0], on_plane[..., 1]
    mx, my = cos * px - sin * py, sin * px + cos * py
    moved = torch.stack([mx, my, torch.full_like(mx, height)], -1)
    cam = (moved - eye) @ rotation  # reference-camera coordinates
    z = cam[..., 2].clamp_min(1e-3)
    grid = torch.stack([cam[..., 0] / z, cam[..., 1] / z], -1) / tan
    grid = torch.where((cam[..., 2] > 1e-3)[..., None], grid, torch.full_like(grid, 2.0))
    identity = torch.stack([x, y], -1) / tan
    grid = torch.where(sees_plane[..., None], grid, identity.expand_as(grid))
    return grid.clamp(-2, 2).float()


def warp_reference(reference: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """reference [B, C, H, W] and grids [B, F, H', W', 2] -> [B, F, C, H', W']."""
    batch, frames = grid.shape[:2]
    source = reference[:, None].expand(-1, frames, -1, -1, -1).flatten(0, 1)
    out = F.grid_sample(
        source, grid.flatten(0, 1).to(reference.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.view(batch, frames, *out.shape[1:])
