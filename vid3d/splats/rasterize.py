"""One rasterize function, two backends: gsplat on CUDA, a tile-based PyTorch rasterizer elsewhere.

`rasterization` has gsplat.rasterization's signature and return value `(render, alpha, info)`,
and `info` carries what gsplat's strategies read (means2d with its gradient, radii, width,
height, n_cameras, ...), so gsplat's DefaultStrategy densifies on both backends.

The torch backend is written here because gsplat's rasterizer exists only as a CUDA kernel.
Projection, covariances and spherical harmonics reuse gsplat's pure-PyTorch helpers; tile binning
and front-to-back compositing follow gsplat's CUDA kernels exactly (per pixel: skip sigma < 0
and alpha < 1/255, clamp alpha at 0.999, stop before transmittance falls to 1e-4), with a
hand-written backward pass that recomputes the per-tile work instead of storing it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
CHUNK_ELEMENTS = 1 << 22  # tiles x Gaussians x pixels per processed group: bounds peak memory

Backend = Literal["auto", "gsplat", "torch"]


def resolve_backend(backend: Backend, device: torch.device | str) -> str:
    """auto: gsplat on CUDA, torch anywhere else."""
    if backend == "auto":
        return "gsplat" if torch.device(device).type == "cuda" else "torch"
    return backend


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z), need not be normalised
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D], [C, N, D], or SH coefficients [N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    backend: Backend = "auto",
    **kwargs: Any,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render Gaussians: colors [C, H, W, X], alphas [C, H, W, 1], info (gsplat's meta).

    Arguments are gsplat.rasterization's, plus `backend`. The torch backend renders unpacked
    (`packed=False`); with backend "gsplat" every gsplat option passes through.
    """
    if resolve_backend(backend, means.device) == "gsplat":
        from gsplat import rasterization as gsplat_rasterization

        return gsplat_rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree, packed=packed,
            tile_size=tile_size, backgrounds=backgrounds, render_mode=render_mode, sparse_grad=sparse_grad,
            absgrad=absgrad, rasterize_mode=rasterize_mode, **kwargs)
    if packed or kwargs:
        raise ValueError(f"the torch backend renders unpacked and without {sorted(kwargs) or ['packed']}")

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased")
    if radius_clip > 0:
        radii = radii * (radii.amax(dim=-1, keepdim=True) > radius_clip)
    n_cameras = viewmats.shape[0]
    opacities = opacities.expand(n_cameras, -1)
    if compensations is not None:
        opacities = opacities * compensations

    colors = _view_colors(colors, sh_degree, means, viewmats)
    if render_mode in ("D", "ED"):
        colors = depths[..., None]
        backgrounds = None if backgrounds is None else torch.zeros_like(backgrounds[..., :1])
    elif render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[..., :1])], dim=-1)

    tiles = bin_tiles(means2d.detach(), radii, depths.detach(), width, height, tile_size)
    render_colors, render_alphas = RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, tiles, width, height, tile_size, absgrad)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat([render_colors[..., :-1],
                                   render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)

    info = {"batch_ids": None, "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d,
            "depths": depths, "conics": conics, "opacities": opacities, "tile_width": tiles.tiles_x,
            "tile_height": tiles.tiles_y, "tiles_per_gauss": tiles.per_gaussian, "width": width,
            "height": height, "tile_size": tile_size, "n_batches": 1, "n_cameras": n_cameras}
    return render_colors, render_alphas, info


def _view_colors(colors: Tensor, sh_degree: int | None, means: Tensor, viewmats: Tensor) -> Tensor:
    """Per-camera colours [C, N, D]: given directly, or evaluated from SH as gsplat does."""
    n_cameras = viewmats.shape[0]
    if sh_degree is None:
        return colors.expand(n_cameras, -1, -1) if colors.dim() == 2 else colors
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    coeffs = colors.expand(n_cameras, -1, -1, -1) if colors.dim() == 3 else colors
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)


class Tiles:
    """Which Gaussians touch which tile, front to back, and tiles grouped by similar load.

    `groups` is a list of (tile ids [T], gaussian ids [T, K] padded with -1); each group holds
    tiles with similar numbers of Gaussians, so padding to the group's largest wastes little.
    Gaussian ids index the flattened [C * N] arrays.
    """

    def __init__(self, groups: list[tuple[Tensor, Tensor]], tiles_x: int, tiles_y: int, per_gaussian: Tensor):
        self.groups, self.tiles_x, self.tiles_y, self.per_gaussian = groups, tiles_x, tiles_y, per_gaussian


@torch.no_grad()
def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int) -> Tiles:
    n_cameras, n = depths.shape
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    device = means2d.device

    # tile rectangle of each Gaussian: [min, max) in tile units, as gsplat's isect_tiles
    limit = torch.tensor([tiles_x, tiles_y], device=device)
    lo = torch.minimum(torch.floor((means2d - radii) / tile_size).long().clamp(min=0), limit)
    hi = torch.minimum(torch.ceil((means2d + radii) / tile_size).long().clamp(min=0), limit)
    visible = (radii > 0).all(dim=-1)
    span = (hi - lo).clamp(min=0)
    per_gaussian = span[..., 0] * span[..., 1] * visible  # [C, N]

    # one (tile, gaussian) pair per touched tile, generated in front-to-back order per camera
    order = torch.argsort(depths, dim=1, stable=True)
    camera_ids = torch.arange(n_cameras, device=device)[:, None].expand(-1, n)
    flat = (camera_ids * n + order).reshape(-1)
    counts = per_gaussian.reshape(-1)[flat]
    pair_gaussian = torch.repeat_interleave(flat, counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(pair_gaussian), device=device) - torch.repeat_interleave(first, counts)
    lo_flat, span_x = lo.reshape(-1, 2)[pair_gaussian], span.reshape(-1, 2)[pair_gaussian, 0]
    tx = lo_flat[:, 0] + local % span_x.clamp(min=1)
    ty = lo_flat[:, 1] + local // span_x.clamp(min=1)
    pair_tile = (pair_gaussian // n) * (tiles_x * tiles_y) + ty * tiles_x + tx

    # stable sort by tile keeps front-to-back order within each tile
    pair_tile, perm = torch.sort(pair_tile, stable=True)
    pair_gaussian = pair_gaussian[perm]
    n_tiles = n_cameras * tiles_x * tiles_y
    per_tile = torch.bincount(pair_tile, minlength=n_tiles)
    start = torch.cumsum(per_tile, 0) - per_tile
    return Tiles(_group_tiles(per_tile, start, pair_gaussian, tile_size * tile_size),
                 tiles_x, tiles_y, per_gaussian)


def _group_tiles(per_tile: Tensor, start: Tensor, pair_gaussian: Tensor, pixels: int) -> list[tuple[Tensor, Tensor]]:
    """Sort tiles by load and cut them into groups whose padded size stays under CHUNK_ELEMENTS."""
    loads, tile_order = torch.sort(per_tile)
    keep = loads > 0
    loads, tile_order = loads[keep].tolist(), tile_order[keep]
    groups, begin = [], 0
    while begin < len(loads):
        end = begin + 1
        # grow while the padded group fits and the load stays within 25% of the group's smallest
        while (end < len(loads) and (end + 1 - begin) * loads[end] * pixels <= CHUNK_ELEMENTS
               and loads[end] <= 1.25 * loads[begin] + 8):
            end += 1
        tiles = tile_order[begin:end]
        k = loads[end - 1]
        offsets = torch.arange(k, device=per_tile.device)
        index = start[tiles, None] + offsets
        valid = offsets < per_tile[tiles, None]
        ids = torch.where(valid, pair_gaussian[index.clamp(max=len(pair_gaussian) - 1)], -1)
        groups.append((tiles, ids))
        begin = end
    return groups


def _pixel_centres(tiles: Tensor, tiles_x: int, tiles_y: int, tile_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates [T, P] of each tile (tile ids include the camera)."""
    within = tiles % (tiles_x * tiles_y)
    offsets = torch.arange(tile_size, device=tiles.device, dtype=dtype) + 0.5
    x = (within % tiles_x)[:, None, None] * tile_size + offsets[None, None, :]
    y = (within // tiles_x)[:, None, None] * tile_size + offsets[None, :, None]
    return (x.expand(-1, tile_size, -1).reshape(len(tiles), -1),
            y.expand(-1, -1, tile_size).reshape(len(tiles), -1))


def _composite(ids: Tensor, px: Tensor, py: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor):
    """Front-to-back alpha of every (tile, pixel, Gaussian slot), laid out [T, P, K] so that the
    scans run along the contiguous last axis. Returns what both passes need."""
    safe = ids.clamp(min=0)
    mean = means2d[safe]  # [T, K, 2]
    conic = conics[safe]  # [T, K, 3]
    opacity = torch.where(ids >= 0, opacities[safe], 0.0)[:, None, :]  # [T, 1, K]
    dx = px[:, :, None] - mean[:, None, :, 0]  # [T, P, K]
    dy = py[:, :, None] - mean[:, None, :, 1]
    a, b, c = conic[:, None, :, 0], conic[:, None, :, 1], conic[:, None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    vis = torch.exp(-sigma)
    raw = opacity * vis
    alpha = torch.where((sigma >= 0) & (raw >= ALPHA_MIN), raw.clamp(max=ALPHA_MAX), 0.0)
    log_keep = torch.log1p(-alpha)
    cum = torch.cumsum(log_keep, dim=-1)  # log transmittance after each Gaussian
    # drawing stops at the first Gaussian that would take transmittance to T_MIN or below
    stop = (alpha > 0) & (cum <= LOG_T_MIN)
    first_stop = torch.where(stop.any(-1), stop.to(torch.uint8).argmax(-1), ids.shape[1])
    drawn = torch.arange(ids.shape[1], device=ids.device) < first_stop[..., None]
    alpha = torch.where(drawn, alpha, 0.0)
    trans_before = torch.exp(cum - log_keep)  # exact for drawn slots, which are a prefix
    trans_final = torch.exp(torch.where(drawn, log_keep, 0.0).sum(-1))  # [T, P]
    return safe, dx, dy, vis, raw, alpha, trans_before, trans_final


class RasterizeToPixels(torch.autograd.Function):
    """Tile-based front-to-back compositing; backward recomputes each tile group (no stored
    [tiles x Gaussians x pixels] tensors), giving gradients for means2d, conics, colors, opacities."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, tiles: Tiles, width, height, tile_size, absgrad):
        n_cameras, n, channels = colors.shape
        flat = (means2d.reshape(-1, 2), conics.reshape(-1, 3), colors.reshape(-1, channels), opacities.reshape(-1))
        n_tiles = n_cameras * tiles.tiles_x * tiles.tiles_y
        pixels = tile_size * tile_size
        out_color = colors.new_zeros(n_tiles, pixels, channels)
        out_trans = colors.new_ones(n_tiles, pixels)
        for tile_ids, ids in tiles.groups:
            px, py = _pixel_centres(tile_ids, tiles.tiles_x, tiles.tiles_y, tile_size, colors.dtype)
            safe, _, _, _, _, alpha, trans_before, trans_final = _composite(ids, px, py, flat[0], flat[1], flat[3])
            out_color[tile_ids] = torch.bmm(alpha * trans_before, flat[2][safe])
            out_trans[tile_ids] = trans_final
        if backgrounds is not None:
            camera_of_tile = torch.arange(n_tiles, device=colors.device) // (tiles.tiles_x * tiles.tiles_y)
            out_color = out_color + out_trans[..., None] * backgrounds[camera_of_tile][:, None, :]
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, out_trans)
        ctx.tiles, ctx.size, ctx.tile_size, ctx.absgrad = tiles, (width, height), tile_size, absgrad
        return (_untile(out_color, n_cameras, tiles, tile_size, width, height),
                _untile(1.0 - out_trans[..., None], n_cameras, tiles, tile_size, width, height))

    @staticmethod
    def backward(ctx, grad_color, grad_alpha):
        means2d, conics, colors, opacities, backgrounds, out_trans = ctx.saved_tensors
        tiles, tile_size = ctx.tiles, ctx.tile_size
        n_cameras, n, channels = colors.shape
        g_color = _tile(grad_color, tiles, tile_size)  # [n_tiles, P, D]
        g_alpha = _tile(grad_alpha, tiles, tile_size)[..., 0]  # [n_tiles, P]
        flat_means, flat_conics = means2d.reshape(-1, 2), conics.reshape(-1, 3)
        flat_colors, flat_opac = colors.reshape(-1, channels), opacities.reshape(-1)
        v_means = torch.zeros_like(flat_means)
        v_means_abs = torch.zeros_like(flat_means) if ctx.absgrad else None
        v_conics, v_colors, v_opac = torch.zeros_like(flat_conics), torch.zeros_like(flat_colors), torch.zeros_like(flat_opac)
        v_backgrounds = None
        if backgrounds is not None:
            camera_of_tile = torch.arange(len(out_trans), device=colors.device) // (tiles.tiles_x * tiles.tiles_y)
            bg_tile = backgrounds[camera_of_tile]  # [n_tiles, D]
            if ctx.needs_input_grad[4]:
                v_backgrounds = torch.zeros_like(backgrounds).index_add_(
                    0, camera_of_tile, (out_trans[..., None] * g_color).sum(1))

        for tile_ids, ids in tiles.groups:
            px, py = _pixel_centres(tile_ids, tiles.tiles_x, tiles.tiles_y, tile_size, colors.dtype)
            safe, dx, dy, vis, raw, alpha, trans_before, trans_final = _composite(
                ids, px, py, flat_means, flat_conics, flat_opac)
            gc = g_color[tile_ids]  # [T, P, D]
            weight = alpha * trans_before  # [T, P, K]
            color = flat_colors[safe]  # [T, K, D]
            color_dot = torch.bmm(gc, color.transpose(1, 2))  # c_k . dL/dC at each pixel
            drawn_dot = weight * color_dot
            # everything behind Gaussian k (later Gaussians, background, alpha), as dL/dC sees it
            behind = drawn_dot.sum(-1, keepdim=True) - torch.cumsum(drawn_dot, dim=-1)
            final = trans_final * g_alpha[tile_ids]  # [T, P]
            if backgrounds is not None:
                final = final - trans_final * (gc * bg_tile[tile_ids][:, None, :]).sum(-1)
            v_alpha = trans_before * color_dot - (behind - final[..., None]) / (1.0 - alpha)
            unclamped = (raw <= ALPHA_MAX) & (alpha > 0)
            v_sigma = torch.where(unclamped, -raw * v_alpha, 0.0)
            a, b, c = (flat_conics[safe][:, None, :, i] for i in range(3))
            v_dx = v_sigma * (a * dx + b * dy)  # dL/d(pixel - mean): the mean gets the negative
            v_dy = v_sigma * (b * dx + c * dy)
            valid = ids >= 0
            index = safe[valid]
            v_means.index_add_(0, index, -torch.stack([v_dx.sum(1), v_dy.sum(1)], dim=-1)[valid])
            if v_means_abs is not None:
                v_means_abs.index_add_(0, index, torch.stack([v_dx.abs().sum(1), v_dy.abs().sum(1)], -1)[valid])
            v_conic = torch.stack([(0.5 * v_sigma * dx * dx).sum(1), (v_sigma * dx * dy).sum(1),
                                   (0.5 * v_sigma * dy * dy).sum(1)], dim=-1)
            v_conics.index_add_(0, index, v_conic[valid])
            v_colors.index_add_(0, index, torch.bmm(weight.transpose(1, 2), gc)[valid])
            v_opac.index_add_(0, index, torch.where(unclamped, vis * v_alpha, 0.0).sum(1)[valid])

        if v_means_abs is not None:
            means2d.absgrad = v_means_abs.reshape(means2d.shape)
        return (v_means.reshape(means2d.shape), v_conics.reshape(conics.shape), v_colors.reshape(colors.shape),
                v_opac.reshape(opacities.shape), v_backgrounds, None, None, None, None, None)


def _untile(values: Tensor, n_cameras: int, tiles: Tiles, tile_size: int, width: int, height: int) -> Tensor:
    """[n_tiles, P, D] -> [C, H, W, D]."""
    d = values.shape[-1]
    image = values.reshape(n_cameras, tiles.tiles_y, tiles.tiles_x, tile_size, tile_size, d)
    image = image.permute(0, 1, 3, 2, 4, 5).reshape(n_cameras, tiles.tiles_y * tile_size, tiles.tiles_x * tile_size, d)
    return image[:, :height, :width]


def _tile(image: Tensor, tiles: Tiles, tile_size: int) -> Tensor:
    """[C, H, W, D] -> [n_tiles, P, D], zero-padded to whole tiles."""
    n_cameras, height, width, d = image.shape
    full = image.new_zeros(n_cameras, tiles.tiles_y * tile_size, tiles.tiles_x * tile_size, d)
    full[:, :height, :width] = image
    full = full.reshape(n_cameras, tiles.tiles_y, tile_size, tiles.tiles_x, tile_size, d)
    return full.permute(0, 1, 3, 2, 4, 5).reshape(-1, tile_size * tile_size, d)
