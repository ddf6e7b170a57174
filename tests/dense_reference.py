"""A dense reference renderer: every Gaussian against every pixel, one Gaussian at a time.

gsplat's compositing rules written as plainly as possible, differentiated by autograd. The tests
hold the torch backend to it; benchmarks/raster.py times it beside the backend.
"""

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci


def dense_reference(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    sh_degree=None,
    backgrounds=None,
    render_mode="RGB",
):
    """gsplat's compositing rules, evaluated for all Gaussians at all pixels with plain autograd."""
    from vid3d.splats.rasterize import view_colors

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height)
    colors = view_colors(colors, sh_degree, means, viewmats)
    if render_mode == "RGB+D":
        colors = torch.cat([colors, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], -1)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype) + 0.5, torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij"
    )
    images, alphas = [], []
    for c in range(len(viewmats)):
        order = torch.argsort(depths[c])
        order = order[(radii[c][order] > 0).all(-1)]
        m, q, o, col = means2d[c][order], conics[c][order], opacities[order], colors[c][order]
        dx = xs.reshape(1, -1) - m[:, :1]
        dy = ys.reshape(1, -1) - m[:, 1:]
        sigma = 0.5 * (q[:, :1] * dx**2 + q[:, 2:] * dy**2) + q[:, 1:2] * dx * dy
        alpha = torch.clamp_max(o[:, None] * torch.exp(-sigma), 0.999)
        alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
        # all Gaussians at all pixels at once: transmittance as a running product over depth order
        trans_after = torch.cumprod(1 - alpha, dim=0)
        stop = (alpha > 0) & (trans_after <= 1e-4)  # the CUDA kernel stops before drawing this one
        alpha = torch.where(torch.cumsum(stop.int(), dim=0) > 0, torch.zeros_like(alpha), alpha)
        kept = torch.cumprod(1 - alpha, dim=0)
        trans = torch.cat([torch.ones_like(kept[:1]), kept[:-1]])
        image = (alpha * trans).T @ col
        trans = kept[-1] if len(kept) else torch.ones(width * height, dtype=means.dtype)
        if backgrounds is not None:
            image = image + trans[:, None] * backgrounds[c]
        images.append(image.reshape(height, width, -1))
        alphas.append((1 - trans).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)
