"""One rasterize function, two backends: gsplat on CUDA, a tile-based PyTorch rasterizer elsewhere.

`rasterization` has gsplat.rasterization's signature and return value `(render, alpha, info)`,
and `info` carries what gsplat's strategies read (means2d with its gradient, radii, width,
height, n_cameras, ...), so gsplat's DefaultStrategy densifies on both backends.

The torch backend is written here because gsplat's rasterizer exists only as a CUDA kernel.
Projection, covariances and spherical harmonics reuse gsplat's pure-PyTorch helpers; tile binning
and front-to-back compositing follow gsplat's CUDA kernels exactly (per pixel: skip sigma < 0
and alpha < 1/255, clamp alpha at 0.999, stop before transmittance falls to 1e-4), with a
hand-written backward pass that recomputes the per-tile work instead of storing it. On the CPU the
compositing runs compiled (vid3d/splats/cpu_kernel.py, the same rules in C++, several times faster);
the PyTorch compositing here serves other devices and machines without a C++ compiler.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from torch import Tensor

from vid3d.splats import cpu_kernel
from vid3d.splats.cpu_kernel import CompiledRasterize, pack_gaussians

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
DEPTH_CHUNK = 32  # Gaussians per tile composited at a time; tiles whose pixels have all stopped drop out
CHUNK_ELEMENTS = 1 << 21  # tiles x pixels x Gaussians of one slab: bounds peak memory

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
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmats,
            Ks,
            width,
            height,
            near_plane=near_plane,
            far_plane=far_plane,
            radius_clip=radius_clip,
            eps2d=eps2d,
            sh_degree=sh_degree,
            packed=packed,
            tile_size=tile_size,
            backgrounds=backgrounds,
            render_mode=render_mode,
            sparse_grad=sparse_grad,
            absgrad=absgrad,
            rasterize_mode=rasterize_mode,
            **kwargs,
        )
    if packed or kwargs:
        raise ValueError(f"the torch backend renders unpacked and without {sorted(kwargs) or ['packed']}")

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means,
        covars,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )
    if radius_clip > 0:
        radii = radii * (radii.amax(dim=-1, keepdim=True) > radius_clip)
    n_cameras = viewmats.shape[0]
    opacities = opacities.expand(n_cameras, -1)
    if compensations is not None:
        opacities = opacities * compensations

    colors = view_colors(colors, sh_degree, means, viewmats)
    if render_mode in ("D", "ED"):
        colors = depths[..., None]
        backgrounds = None if backgrounds is None else torch.zeros_like(backgrounds[..., :1])
    elif render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[..., :1])], dim=-1)

    tiles = bin_tiles(
        means2d.detach(), conics.detach(), opacities.detach(), radii, depths.detach(), width, height, tile_size
    )
    compiled = cpu_kernel.usable(colors.device, tile_size, colors.shape[-1])
    composite = CompiledRasterize if compiled else RasterizeToPixels
    render_colors, render_alphas = composite.apply(
        means2d, conics, colors, opacities, backgrounds, tiles, width, height, tile_size, absgrad
    )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )

    info = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "tile_width": tiles.tiles_x,
        "tile_height": tiles.tiles_y,
        "tiles_per_gauss": tiles.per_gaussian,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": n_cameras,
    }
    return render_colors, render_alphas, info


def view_colors(colors: Tensor, sh_degree: int | None, means: Tensor, viewmats: Tensor) -> Tensor:
    """Per-camera colours [C, N, D]: given directly, or evaluated from SH as gsplat does."""
    n_cameras = viewmats.shape[0]
    if sh_degree is None:
        return colors.expand(n_cameras, -1, -1) if colors.dim() == 2 else colors
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    coeffs = colors.expand(n_cameras, -1, -1, -1) if colors.dim() == 3 else colors
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)


class Tiles:
    """Which Gaussians touch which tile, front to back.

    Tile t's Gaussians are `gaussians[start[t] : start[t] + count[t]]`, indices into the flattened
    [C * N] arrays; tile ids run over all cameras.
    """

    def __init__(
        self, gaussians: Tensor, start: Tensor, count: Tensor, tiles_x: int, tiles_y: int, per_gaussian: Tensor
    ):
        self.gaussians, self.start, self.count = gaussians, start, count
        self.tiles_x, self.tiles_y, self.per_gaussian = tiles_x, tiles_y, per_gaussian

    def slots(self, tiles: Tensor, begin: int, size: int) -> Tensor:
        """Gaussian ids [T, size] at depth positions begin ... begin + size of each tile; -1 past its end."""
        offsets = torch.arange(begin, begin + size, device=tiles.device)
        index = (self.start[tiles, None] + offsets).clamp(max=max(len(self.gaussians) - 1, 0))
        return torch.where(offsets < self.count[tiles, None], self.gaussians[index], -1)


@torch.no_grad()
def bin_tiles(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> Tiles:
    n_cameras, n = depths.shape
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    device = means2d.device

    # Tile rectangle of each Gaussian, [min, max) in tile units as gsplat's isect_tiles, around the
    # ellipse outside which alpha = opacity * exp(-sigma) < 1/255 (sigma > log(255 opacity)): tighter
    # than gsplat's 3.33-sigma radii for translucent Gaussians, and exact, since such pixels are skipped.
    a, b, c = conics.unbind(-1)
    det = (a * c - b * b).clamp(min=1e-12)
    sigma_max = torch.log((opacities / ALPHA_MIN).clamp(min=1.0))
    extent = torch.sqrt(2 * sigma_max[..., None] * torch.stack([c / det, a / det], dim=-1))  # [C, N, 2]
    extent = torch.minimum(extent, radii.to(extent.dtype))
    limit = torch.tensor([tiles_x, tiles_y], device=device)
    lo = torch.minimum(torch.floor((means2d - extent) / tile_size).long().clamp(min=0), limit)
    hi = torch.minimum(torch.ceil((means2d + extent) / tile_size).long().clamp(min=0), limit)
    visible = (radii > 0).all(dim=-1) & (opacities >= ALPHA_MIN)
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
    count = torch.bincount(pair_tile, minlength=n_cameras * tiles_x * tiles_y)
    return Tiles(pair_gaussian[perm], torch.cumsum(count, 0) - count, count, tiles_x, tiles_y, per_gaussian)


def _chunks(tiles: Tiles, done: Tensor, pixels: int):
    """Yield (tile ids, begin): slabs of DEPTH_CHUNK Gaussians, front to back, of the tiles that still
    have Gaussians there and pixels still open; each slab stays under CHUNK_ELEMENTS values."""
    max_tiles = max(1, CHUNK_ELEMENTS // (pixels * DEPTH_CHUNK))
    for begin in range(0, int(tiles.count.max()), DEPTH_CHUNK):
        active = torch.nonzero((tiles.count > begin) & ~done.all(-1)).flatten()
        if len(active) == 0:  # every tile has stopped or run out of Gaussians
            return
        yield from ((batch, begin) for batch in torch.split(active, max_tiles))


def _pixel_features(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[P, 6]: (u^2, uv, v^2, u, v, 1) of each pixel centre, in coordinates local to its tile."""
    centre = torch.arange(tile_size, dtype=dtype, device=device) + 0.5
    v, u = torch.meshgrid(centre, centre, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=1)


def _tile_origins(tiles: Tiles, tile_ids: Tensor, tile_size: int, dtype: torch.dtype) -> Tensor:
    """[T, 1, 2]: pixel coordinates of each tile's corner."""
    within = tile_ids % (tiles.tiles_x * tiles.tiles_y)
    return torch.stack([within % tiles.tiles_x, within // tiles.tiles_x], dim=-1)[:, None, :].to(dtype) * tile_size


def _composite(ids: Tensor, origins: Tensor, features: Tensor, gaussians: Tensor, log_t0: Tensor, done: Tensor):
    """Front-to-back alpha of every (tile, pixel, Gaussian slot) of one slab, laid out [T, P, K] so
    the scan runs along the contiguous last axis.

    `gaussians` packs (mean x, mean y, conic a, b, c, opacity) per Gaussian. The exponent
    sigma = 0.5 a du^2 + b du dv + 0.5 c dv^2 is a quadratic in the pixel's tile-local (u, v), so
    it is one matrix product of the pixel features with six coefficients per Gaussian (tile-local
    coordinates keep the terms small enough for float32). `log_t0` is the log transmittance
    before the slab; `done` marks pixels that stopped in an earlier slab.
    """
    g = gaussians[ids.clamp(min=0)]  # [T, K, 6]
    mu, mv = g[..., 0] - origins[..., 0], g[..., 1] - origins[..., 1]
    a, b, c = g[..., 2], g[..., 3], g[..., 4]
    opacity = (g[..., 5] * (ids >= 0))[:, None, :]  # [T, 1, K]
    coefficients = torch.stack(
        [
            0.5 * a,
            b,
            0.5 * c,
            -(a * mu + b * mv),
            -(b * mu + c * mv),
            0.5 * a * mu * mu + b * mu * mv + 0.5 * c * mv * mv,
        ],
        dim=1,
    )  # [T, 6, K]
    sigma = torch.matmul(features, coefficients)  # [T, P, K]
    vis = torch.exp(-sigma)
    raw = opacity * vis
    # (masks multiply rather than torch.where: several times faster on CPU, and the values are finite)
    alpha = raw.clamp(max=ALPHA_MAX) * ((sigma >= 0) & (raw >= ALPHA_MIN) & ~done[..., None])
    log_keep = torch.log1p(-alpha)
    cum = log_t0[..., None] + torch.cumsum(log_keep, dim=-1)  # log transmittance after each Gaussian
    # drawing stops at the first Gaussian that would take transmittance to T_MIN or below
    stop = (alpha > 0) & (cum <= LOG_T_MIN)
    stopped = stop.any(-1)
    first_stop = torch.where(stopped, stop.to(torch.uint8).argmax(-1), ids.shape[1])
    drawn = torch.arange(ids.shape[1], device=ids.device) < first_stop[..., None]
    alpha = alpha * drawn
    trans_before = torch.exp(cum - log_keep)  # exact for drawn slots, which are a prefix
    log_t_end = log_t0 + (log_keep * drawn).sum(-1)
    return (mu, mv, a, b, c), vis, raw, alpha, trans_before, log_t_end, stopped


def _front_to_back(tiles: Tiles, gaussians: Tensor, features: Tensor, tile_size: int, log_t: Tensor, done: Tensor):
    """Composite every slab front to back, yielding (tile ids, begin, Gaussian ids, log_t0, done0,
    alpha, transmittance before each Gaussian); the per-pixel `log_t` and `done` advance in place."""
    for tile_ids, begin in _chunks(tiles, done, features.shape[0]):
        ids = tiles.slots(tile_ids, begin, DEPTH_CHUNK)
        log_t0, done0 = log_t[tile_ids], done[tile_ids]
        _, _, _, alpha, trans_before, log_t_end, stopped = _composite(
            ids, _tile_origins(tiles, tile_ids, tile_size, gaussians.dtype), features, gaussians, log_t0, done0
        )
        yield tile_ids, begin, ids, log_t0, done0, alpha, trans_before
        log_t[tile_ids], done[tile_ids] = log_t_end, done0 | stopped


class RasterizeToPixels(torch.autograd.Function):
    """Tile-based front-to-back compositing in slabs of DEPTH_CHUNK Gaussians; a tile leaves the
    loop once all its pixels have stopped, as gsplat's kernels stop. The backward pass walks the
    slabs back to front and recomputes each one, so no [tiles x pixels x Gaussians] tensor is kept."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, tiles: Tiles, width, height, tile_size, absgrad):
        n_cameras, _n, channels = colors.shape
        gaussians = pack_gaussians(means2d, conics, opacities)
        flat_colors = colors.reshape(-1, channels)
        features = _pixel_features(tile_size, colors.dtype, colors.device)
        n_tiles, pixels = n_cameras * tiles.tiles_x * tiles.tiles_y, tile_size * tile_size
        out_color = colors.new_zeros(n_tiles, pixels, channels)
        log_t = colors.new_zeros(n_tiles, pixels)
        done = torch.zeros(n_tiles, pixels, dtype=torch.bool, device=colors.device)
        slabs = []
        for tile_ids, begin, ids, log_t0, done0, alpha, trans_before in _front_to_back(
            tiles, gaussians, features, tile_size, log_t, done
        ):
            out_color[tile_ids] += torch.bmm(alpha * trans_before, flat_colors[ids.clamp(min=0)])
            slabs.append((tile_ids, begin, log_t0, done0))
        out_trans = torch.exp(log_t)
        if backgrounds is not None:
            camera_of_tile = torch.arange(n_tiles, device=colors.device) // (tiles.tiles_x * tiles.tiles_y)
            out_color = out_color + out_trans[..., None] * backgrounds[camera_of_tile][:, None, :]
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, out_trans)
        ctx.tiles, ctx.slabs, ctx.tile_size, ctx.absgrad = tiles, slabs, tile_size, absgrad
        return (
            _untile(out_color, n_cameras, tiles, tile_size, width, height),
            _untile(1.0 - out_trans[..., None], n_cameras, tiles, tile_size, width, height),
        )

    @staticmethod
    def backward(ctx, grad_color, grad_alpha):
        means2d, conics, colors, opacities, backgrounds, out_trans = ctx.saved_tensors
        tiles, tile_size = ctx.tiles, ctx.tile_size
        _n_cameras, _n, channels = colors.shape
        gaussians = pack_gaussians(means2d, conics, opacities)
        flat_colors = colors.reshape(-1, channels)
        features = _pixel_features(tile_size, colors.dtype, colors.device)
        g_color = _tile(grad_color, tiles, tile_size)  # [n_tiles, P, D]
        # what the transmittance left after the last Gaussian is worth: alpha, minus the background
        final = out_trans * _tile(grad_alpha, tiles, tile_size)[..., 0]  # [n_tiles, P]
        v_gaussians = torch.zeros_like(gaussians)  # (mean x, mean y, a, b, c, opacity)
        v_colors = torch.zeros_like(flat_colors)
        v_means_abs = torch.zeros(len(gaussians), 2, dtype=colors.dtype, device=colors.device) if ctx.absgrad else None
        v_backgrounds = None
        if backgrounds is not None:
            camera_of_tile = torch.arange(len(out_trans), device=colors.device) // (tiles.tiles_x * tiles.tiles_y)
            background_dot = (g_color * backgrounds[camera_of_tile][:, None, :]).sum(-1)
            final = final - out_trans * background_dot
            if ctx.needs_input_grad[4]:
                v_backgrounds = torch.zeros_like(backgrounds).index_add_(
                    0, camera_of_tile, (out_trans[..., None] * g_color).sum(1)
                )

        behind_later = torch.zeros_like(out_trans)  # sum over later slabs of weight * (colour . dL/dC)
        for tile_ids, begin, log_t0, done0 in reversed(ctx.slabs):
            ids = tiles.slots(tile_ids, begin, DEPTH_CHUNK)
            safe = ids.clamp(min=0)
            (mu, mv, a, b, c), vis, raw, alpha, trans_before, _, _ = _composite(
                ids, _tile_origins(tiles, tile_ids, tile_size, colors.dtype), features, gaussians, log_t0, done0
            )
            gc = g_color[tile_ids]  # [T, P, D]
            weight = alpha * trans_before  # [T, P, K]
            color_dot = torch.bmm(gc, flat_colors[safe].transpose(1, 2))  # c_k . dL/dC at each pixel
            drawn_dot = weight * color_dot
            slab_total = drawn_dot.sum(-1)
            # everything behind Gaussian k (later Gaussians, background, alpha), as dL/dC sees it
            behind = (behind_later[tile_ids] + slab_total)[..., None] - torch.cumsum(drawn_dot, dim=-1)
            behind_later[tile_ids] += slab_total
            v_alpha = trans_before * color_dot - (behind - final[tile_ids][..., None]) / (1.0 - alpha)
            unclamped = (raw <= ALPHA_MAX) & (alpha > 0)
            v_alpha = v_alpha * unclamped
            v_sigma = -raw * v_alpha
            # sigma's six coefficients get the pixel features weighted by dL/dsigma; chain rule to the
            # tile-local mean (mu, mv) and the conic (a, b, c)
            s0, s1, s2, s3, s4, s5 = torch.matmul(v_sigma.transpose(1, 2), features).unbind(-1)  # [T, K] each
            v_slot = torch.stack(
                [
                    -a * s3 - b * s4 + (a * mu + b * mv) * s5,
                    -b * s3 - c * s4 + (b * mu + c * mv) * s5,
                    0.5 * s0 - mu * s3 + 0.5 * mu * mu * s5,
                    s1 - mv * s3 - mu * s4 + mu * mv * s5,
                    0.5 * s2 - mv * s4 + 0.5 * mv * mv * s5,
                    (vis * v_alpha).sum(1),
                ],
                dim=-1,
            )  # [T, K, 6]
            valid = ids >= 0
            index = safe[valid]
            v_gaussians.index_add_(0, index, v_slot[valid])
            v_colors.index_add_(0, index, torch.bmm(weight.transpose(1, 2), gc)[valid])
            if v_means_abs is not None:
                du = features[None, :, 3:4] - mu[:, None, :]  # [T, P, K]
                dv = features[None, :, 4:5] - mv[:, None, :]
                v_abs = torch.stack(
                    [
                        (v_sigma * (a[:, None] * du + b[:, None] * dv)).abs().sum(1),
                        (v_sigma * (b[:, None] * du + c[:, None] * dv)).abs().sum(1),
                    ],
                    dim=-1,
                )
                v_means_abs.index_add_(0, index, v_abs[valid])

        if v_means_abs is not None:
            means2d.absgrad = v_means_abs.reshape(means2d.shape)
        v_gaussians = v_gaussians.reshape(*means2d.shape[:-1], 6)
        return (
            v_gaussians[..., :2],
            v_gaussians[..., 2:5],
            v_colors.reshape(colors.shape),
            v_gaussians[..., 5],
            v_backgrounds,
            None,
            None,
            None,
            None,
            None,
        )


@torch.no_grad()
def median_depth(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    tile_size: int = 4,
    eps2d: float = 0.3,
    values: Tensor | None = None,
) -> Tensor:
    """[C, H, W] z-depth of the Gaussian at which each pixel's transmittance falls below 0.5
    (0 where it never does): the surface a pixel mostly shows, sharper at edges than the expected
    depth, which blends front and back. The same compositing as `rasterization`, without gradients.
    With `values` [C, N], that Gaussian's value instead of its depth (its index, say)."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d=eps2d)
    opacities = opacities.expand(len(viewmats), -1)
    tiles = bin_tiles(means2d, conics, opacities, radii, depths, width, height, tile_size)
    values = depths if values is None else values.to(depths.dtype)
    if cpu_kernel.usable(means.device, tile_size):
        return cpu_kernel.median_depth(means2d, conics, opacities, values, tiles, width, height, tile_size)
    gaussians = pack_gaussians(means2d, conics, opacities)
    flat_depths = values.reshape(-1)
    features = _pixel_features(tile_size, means.dtype, means.device)
    n_tiles, pixels = len(viewmats) * tiles.tiles_x * tiles.tiles_y, tile_size * tile_size
    log_t = means.new_zeros(n_tiles, pixels)
    done = torch.zeros(n_tiles, pixels, dtype=torch.bool, device=means.device)
    median = means.new_zeros(n_tiles, pixels)
    found = torch.zeros(n_tiles, pixels, dtype=torch.bool, device=means.device)
    for tile_ids, _, ids, _, _, alpha, trans_before in _front_to_back(
        tiles, gaussians, features, tile_size, log_t, done
    ):
        crossed = (alpha > 0) & (trans_before * (1 - alpha) < 0.5)  # [T, P, K]
        first = crossed.to(torch.uint8).argmax(-1)
        new = crossed.any(-1) & ~found[tile_ids]
        slab_depth = flat_depths[ids.clamp(min=0)]  # [T, K]
        median[tile_ids] = torch.where(new, slab_depth.gather(1, first), median[tile_ids])
        found[tile_ids] |= new
    return _untile(median[..., None], len(viewmats), tiles, tile_size, width, height)[..., 0]


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
