"""Gaussians that lie on the surface: their normals and planes rendered as extra channels, and the
regularisers that train them flat and consistent (the ideas of PGSR, 2DGS and Mip-NeRF 360, written
here from the papers; no code copied).

Each Gaussian's normal n is the axis of its smallest scale, turned to face the camera; its plane
passes through its mean m (camera coordinates). Rendered with the colour, in one rasterisation on
either backend, are extra channels per Gaussian (`SURFACE_CHANNELS`):
- normal (3): n, alpha-blended into a normal map N;
- inverse_plane (3): q = n / (n . m). A pixel's ray r (z = 1) meets the plane at z = 1 / (q . r): the
  plane's inverse depth is linear in r, so the blend Q = sum w q gives sum w (1 / z_i(r)) = Q . r,
  each Gaussian's own plane evaluated at the pixel. The blended inverse depth alpha / (Q . r) is
  PGSR's unbiased depth, without dividing by a blended normal (a small error in a blended normal
  moves a plane through a far point a long way);
- depth, depth2 (2): the centres' z and z^2, whose blends give the spread of depth along the ray.

The regularisers, each `splats.<name>_weight` from step `splats.<name>_start` (`REGULARISERS`):
- flatten: the mean smallest scale, in scene scales: each Gaussian becomes a disc with a normal;
- normal: sum_i w_i (1 - n_i . n_depth) per pixel = alpha - N . n_depth, where n_depth is the normal
  of the rendered depth's surface (central differences of back-projected pixels): zero when the
  Gaussians' normals agree with the surface their depth makes;
- distortion: sum_ij w_i w_j (z_i - z_j)^2 per pixel, which equals 2 (alpha Z2 - Z^2) for the blends
  Z = sum w z and Z2 = sum w z^2: the compositing's own channels carry it, forward and backward, on
  both backends and in the compiled CPU kernel, with no kernel of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from vid3d.splats.rasterize import rasterization, view_colors

SURFACE_CHANNELS = {"normal": 3, "inverse_plane": 3, "depth": 1, "depth2": 1}
MIN_ALPHA = 0.5  # pixels below this opacity have no surface to regularise


def rotations(quats: Tensor) -> Tensor:
    """[N, 3, 3] rotation matrices of quaternions (w, x, y, z), normalised here."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def normals(quats: Tensor, scales: Tensor) -> Tensor:
    """[N, 3] world direction of each Gaussian's smallest axis (unit; its sign is arbitrary)."""
    axis = scales.argmin(dim=-1)
    return rotations(quats).gather(2, axis[:, None, None].expand(-1, 3, 1))[..., 0]


def surface_channels(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, names: list[str]) -> Tensor:
    """[C, N, channels] per camera: the named SURFACE_CHANNELS, in camera coordinates."""
    rotation, translation = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]
    centres = (rotation @ means[None, :, :, None])[..., 0] + translation  # [C, N, 3]
    normal = (rotation @ normals(quats, scales)[None, :, :, None])[..., 0]
    normal = torch.where((normal * centres).sum(-1, keepdim=True) > 0, -normal, normal)  # face the camera
    values = {
        "normal": normal,
        "inverse_plane": inverse_planes(normal, centres),
        "depth": centres[..., 2:],
        "depth2": centres[..., 2:] ** 2,
    }
    return torch.cat([values[name] for name in names], dim=-1)


@dataclass
class SurfaceRender:
    """One camera's render with its surface maps ([H, W] or [H, W, 3]; blends, not divided by alpha)."""

    image: Tensor  # [1, H, W, 3]
    alpha: Tensor  # [H, W]
    maps: dict[str, Tensor]
    K: Tensor
    info: dict


def render_surface(
    splats: torch.nn.ParameterDict,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int,
    names: list[str],
    backend: str = "auto",
    backgrounds: Tensor | None = None,
) -> SurfaceRender:
    """Render one camera's colour and the named surface channels in one rasterisation."""
    from vid3d.splats.model import tile_size_for

    means, quats, scales = splats["means"], splats["quats"], torch.exp(splats["scales"])
    colors = view_colors(torch.cat([splats["sh0"], splats["shN"]], dim=1), sh_degree, means, viewmats)
    extra = surface_channels(means, quats, scales, viewmats, names)
    if backgrounds is not None:
        backgrounds = F.pad(backgrounds, (0, extra.shape[-1]))
    rendered, alpha, info = rasterization(
        means,
        quats,
        scales,
        torch.sigmoid(splats["opacities"]),
        torch.cat([colors, extra], dim=-1),
        viewmats,
        Ks,
        width,
        height,
        backgrounds=backgrounds,
        backend=backend,
        tile_size=tile_size_for(backend, means.device),
    )
    maps, at = {}, 3
    for name in names:
        size = SURFACE_CHANNELS[name]
        maps[name] = rendered[0, ..., at : at + size].squeeze(-1)
        at += size
    return SurfaceRender(rendered[..., :3], alpha[0, ..., 0], maps, Ks[0], info)


def pixel_rays(K: Tensor, width: int, height: int) -> Tensor:
    """[H, W, 3] each pixel centre's ray in camera coordinates, z = 1."""
    v, u = torch.meshgrid(
        torch.arange(height, device=K.device, dtype=K.dtype),
        torch.arange(width, device=K.device, dtype=K.dtype),
        indexing="ij",
    )
    return torch.stack([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)


def inverse_planes(normal: Tensor, centres: Tensor) -> Tensor:
    """q = n / (n . m) per Gaussian: the plane through m with normal n has inverse depth q . r along ray r
    (z = 1). Planes seen edge-on (|n . m| tiny) are clamped: they are cut by min_facing anyway."""
    offset = (normal * centres).sum(-1, keepdim=True)  # negative: the normal faces the camera
    return normal / offset.clamp(max=-1e-6)


def planar_depth(inverse_plane: Tensor, alpha: Tensor, K: Tensor) -> Tensor:
    """[H, W] z-depth of the blended planes: alpha / (Q . r) (0 where the blend meets no plane in front)."""
    rays = pixel_rays(K, alpha.shape[1], alpha.shape[0])
    inverse = (inverse_plane * rays).sum(-1)
    return torch.where(inverse > 1e-6, alpha / inverse.clamp(min=1e-6), torch.zeros_like(inverse))


def depth_normals(depth: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Normals [H, W, 3] of the surface a depth map [H, W] makes (central differences of its
    back-projected pixels, facing the camera), and where they exist [H, W] (depth at the pixel
    and its four neighbours; not at the border)."""
    points = pixel_rays(K, depth.shape[1], depth.shape[0]) * depth[..., None]
    du = torch.zeros_like(points)
    dv = torch.zeros_like(points)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    normal = F.normalize(torch.cross(du, dv, dim=-1), dim=-1)
    normal = torch.where((normal * points).sum(-1, keepdim=True) > 0, -normal, normal)
    has = depth > 0
    valid = torch.zeros_like(has)
    valid[1:-1, 1:-1] = has[1:-1, 1:-1] & has[2:, 1:-1] & has[:-2, 1:-1] & has[1:-1, 2:] & has[1:-1, :-2]
    return normal, valid


@dataclass
class Context:
    """What a regulariser's loss reads at one training step."""

    splats: torch.nn.ParameterDict
    scene_scale: float
    surface: SurfaceRender | None


def flatten_loss(ctx: Context) -> Tensor:
    return torch.exp(ctx.splats["scales"]).amin(dim=-1).mean() / ctx.scene_scale


def normal_loss(ctx: Context) -> Tensor:
    s = ctx.surface
    depth = planar_depth(s.maps["inverse_plane"], s.alpha, s.K)
    surface_normal, valid = depth_normals(depth, s.K)
    valid = valid & (s.alpha >= MIN_ALPHA)
    disagreement = s.alpha - (s.maps["normal"] * surface_normal).sum(-1)
    return (disagreement * valid).sum() / valid.sum().clamp(min=1)


def distortion_loss(ctx: Context) -> Tensor:
    s = ctx.surface
    spread = 2 * (s.alpha * s.maps["depth2"] - s.maps["depth"] ** 2)
    return spread.clamp(min=0).mean() / ctx.scene_scale**2


@dataclass(frozen=True)
class Regulariser:
    """One row: settings splats.<name>_weight and splats.<name>_start, the surface channels it reads."""

    name: str
    channels: tuple[str, ...]
    loss: Callable[[Context], Tensor]


REGULARISERS = (
    Regulariser("flatten", (), flatten_loss),
    Regulariser("normal", ("normal", "inverse_plane"), normal_loss),
    Regulariser("distortion", ("depth", "depth2"), distortion_loss),
)


def active(settings, step: int) -> list[Regulariser]:
    """The regularisers that act at `step` of (fitted) settings."""
    return [
        r
        for r in REGULARISERS
        if getattr(settings, f"{r.name}_weight") > 0 and step >= getattr(settings, f"{r.name}_start")
    ]


def channels_of(regularisers: list[Regulariser]) -> list[str]:
    """The surface channels the regularisers read, in SURFACE_CHANNELS' order."""
    wanted = {name for r in regularisers for name in r.channels}
    return [name for name in SURFACE_CHANNELS if name in wanted]
