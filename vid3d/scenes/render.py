"""CPU ray casting of a procedural Scene from a set of Cameras."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cameras import Cameras
from .procedural import Scene, cast_rays, shade, sky, surface_normals


@dataclass(eq=False)
class Render:
    images: np.ndarray  # (N,H,W,3) uint8
    depth: np.ndarray  # (N,H,W) float32 z-depth at pixel centres, 0 where nothing is hit
    mask: np.ndarray  # (N,H,W) bool, ray hit the ground or an object
    cameras: Cameras


def camera_rays(K: np.ndarray, cam_to_world: np.ndarray, width: int, height: int, supersample: int = 1):
    """Origins and directions (n,3) for an (height*s, width*s) grid of samples, row-major.
    Sample (i, j) sits at pixel coordinate ((j + 0.5) / s, (i + 0.5) / s); for s=1 these are the
    pixel centres. Directions have camera-space z = 1, so the hit parameter t is the z-depth."""
    s = supersample
    u = (torch.arange(width * s, dtype=torch.float64) + 0.5) / s
    v = (torch.arange(height * s, dtype=torch.float64) + 0.5) / s
    x = ((u - K[0, 2]) / K[0, 0])[None, :].expand(height * s, -1).reshape(-1, 1)
    y = ((v - K[1, 2]) / K[1, 1])[:, None].expand(-1, width * s).reshape(-1, 1)
    R = torch.from_numpy(cam_to_world[:3, :3])
    dirs = x * R[:, 0] + y * R[:, 1] + R[:, 2]
    origins = torch.from_numpy(cam_to_world[:3, 3]).expand_as(dirs)
    return origins.float(), dirs.float()


def shade_rays(scene: Scene, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Colour (n,3), hit t (n,) and surface id (n,) for each ray."""
    t, surface = cast_rays(scene, o, d)
    colour = sky(scene, d)
    hit = torch.nonzero(surface >= 0).squeeze(1)
    if len(hit):
        p = o[hit] + t[hit, None] * d[hit]
        n = surface_normals(scene, p, surface[hit])
        n = torch.where((n * d[hit]).sum(dim=1, keepdim=True) > 0, -n, n)  # e.g. ground seen from below
        colour[hit] = shade(scene, p, n, surface[hit])
    return colour, t, surface


def render(scene: Scene, cams: Cameras, supersample: int = 2) -> Render:
    n, h, w, s = len(cams), cams.height, cams.width, int(supersample)
    images = np.empty((n, h, w, 3), np.uint8)
    depth = np.zeros((n, h, w), np.float32)
    mask = np.zeros((n, h, w), bool)
    with torch.no_grad():
        for i in range(n):
            o, d = camera_rays(cams.K[i], cams.cam_to_world[i], w, h, 1)
            if s == 1:
                colour, t, surface = shade_rays(scene, o, d)
            else:  # depth and mask come from the pixel centres; colour from the s x s sub-samples
                t, surface = cast_rays(scene, o, d)
                colour, _, _ = shade_rays(scene, *camera_rays(cams.K[i], cams.cam_to_world[i], w, h, s))
                colour = colour.reshape(h, s, w, s, 3).mean(dim=(1, 3))
            hit = (surface >= 0).reshape(h, w)
            mask[i] = hit.numpy()
            depth[i] = torch.where(hit, t.reshape(h, w), 0.0).numpy()
            images[i] = (colour.reshape(h, w, 3).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return Render(images, depth, mask, cams)
