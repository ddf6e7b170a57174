"""The compiled CPU rasterizer (cpu_rasterize.cpp), which the torch backend uses for CPU tensors.

It is built with torch's C++ extension tools on first use, once per source and torch version, into
vid3d's cache folder ($VID3D_CACHE, else ~/.cache/vid3d): in a scratch folder renamed into place
when complete, so jobs killed while compiling or racing to compile never leave a half-built one.
Where it cannot be built (no C++ compiler), or with VID3D_CPU_KERNEL=0, the backend's PyTorch
compositing runs instead (the same images and gradients, several times slower).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from vid3d.ui import log

SOURCE = Path(__file__).with_name("cpu_rasterize.cpp")
NAME = "vid3d_raster"
CHANNELS, TILE_SIZES = (1, 2, 3, 4, 8, 12), (4, 8, 16)  # what the compiled loops are instantiated for
# -fopenmp: ATen's parallel_for is OpenMP inlined from its header (without it, one thread); the library
# links libgomp.so.1, which resolves to the copy torch has loaded, so there is one OpenMP runtime.
# No -march=native: a cache folder shared by a farm's nodes must run on all of them.
FLAGS = ["-O3", "-fopenmp"]


def cache_dir() -> Path:
    return Path(os.environ.get("VID3D_CACHE") or Path.home() / ".cache" / "vid3d")


def library_path() -> Path:
    """Where the library of this source, torch and Python lives once built."""
    key = hashlib.sha256(SOURCE.read_bytes() + f"{torch.__version__} {sys.version} {FLAGS}".encode()).hexdigest()
    return cache_dir() / f"cpu-rasterize-{key[:16]}" / f"{NAME}.so"


@functools.cache
def available() -> bool:
    """Load the compiled rasterizer, building it first if needed; False where it cannot be."""
    if os.environ.get("VID3D_CPU_KERNEL") == "0":
        return False
    library = library_path()
    try:
        if library.exists():
            torch.ops.load_library(str(library))
        else:
            _build(library)
        return True
    except Exception as error:  # noqa: BLE001  # no compiler, or one that fails: the PyTorch compositing still works
        reason = str(error).strip().splitlines()[-1:] or [type(error).__name__]
        log.warning(
            "splats: could not build the compiled CPU rasterizer (%s); using the PyTorch one, several "
            "times slower: install a C++ compiler (g++) or set VID3D_CACHE to a writable folder",
            reason[0][:200],
        )
        return False


def usable(device: torch.device, tile_size: int, channels: int = 1) -> bool:
    """Whether the compiled compositing serves a call: CPU tensors, and tiles and channels it is built for."""
    return device.type == "cpu" and channels <= CHANNELS[-1] and tile_size in TILE_SIZES and available()


def padded_channels(channels: int) -> int:
    """The channel count the compiled loops draw `channels` with (extra channels are zeros)."""
    return next(c for c in CHANNELS if c >= channels)


def _build(library: Path) -> None:
    """Compile in a scratch folder (which loads the library) and rename it to `library`'s folder."""
    from torch.utils.cpp_extension import load

    library.parent.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{library.parent.name}-", dir=library.parent.parent))
    try:
        log.info("splats: compiling the CPU rasterizer into %s (once; about 15 s on 2 cores)", library.parent)
        load(
            NAME,
            [str(SOURCE)],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(scratch),
            is_python_module=False,
        )
        try:
            scratch.rename(library.parent)
        except OSError:  # another job finished first: its library is the same
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pack_gaussians(means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """[C * N, 6]: (mean x, mean y, conic a, b, c, opacity) per projected Gaussian."""
    return torch.cat([means2d, conics, opacities[..., None]], dim=-1).reshape(-1, 6)


def _forward(gaussians: Tensor, flat_colors: Tensor, tiles, n_cameras: int, tile_size: int, width: int, height: int):
    """The C++ forward pass: colour, transmittance, Gaussians drawn, and the first channel's value
    where transmittance falls below one half, each per pixel [C, H, W(, D)]."""
    return torch.ops.vid3d_raster.forward(
        gaussians,
        flat_colors,
        tiles.gaussians,
        tiles.start,
        tiles.count,
        n_cameras,
        tiles.tiles_x,
        tiles.tiles_y,
        tile_size,
        width,
        height,
    )


class CompiledRasterize(torch.autograd.Function):
    """Front-to-back compositing of binned Gaussians per pixel, forward and backward in C++."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, tiles, width, height, tile_size, absgrad):
        n_cameras, _, channels = colors.shape
        gaussians = pack_gaussians(means2d, conics, opacities)
        flat_colors = colors.reshape(-1, channels)
        padding = padded_channels(channels) - channels
        if padding:
            flat_colors = torch.nn.functional.pad(flat_colors, (0, padding))
        flat_colors = flat_colors.contiguous()
        color, trans, last, _ = _forward(gaussians, flat_colors, tiles, n_cameras, tile_size, width, height)
        color = color[..., :channels]
        if backgrounds is not None:
            color = color + trans[..., None] * backgrounds[:, None, None, :]
        ctx.save_for_backward(means2d, gaussians, flat_colors, backgrounds, trans, last)
        ctx.tiles, ctx.size, ctx.absgrad, ctx.shape = tiles, (tile_size, width, height), absgrad, means2d.shape
        return color, 1.0 - trans[..., None]

    @staticmethod
    def backward(ctx, grad_color, grad_alpha):
        means2d, gaussians, flat_colors, backgrounds, trans, last = ctx.saved_tensors
        tiles, (tile_size, width, height) = ctx.tiles, ctx.size
        channels = grad_color.shape[-1]
        grad_trans = -grad_alpha[..., 0]  # alpha = 1 - T
        v_backgrounds = None
        if backgrounds is not None:
            grad_trans = grad_trans + (grad_color * backgrounds[:, None, None, :]).sum(-1)
            if ctx.needs_input_grad[4]:
                v_backgrounds = (trans[..., None] * grad_color).sum((1, 2))
        grad_color = torch.nn.functional.pad(grad_color, (0, flat_colors.shape[1] - channels)).contiguous()
        v_pairs, v_pair_colors = torch.ops.vid3d_raster.backward(
            gaussians,
            flat_colors,
            tiles.gaussians,
            tiles.start,
            tiles.count,
            tiles.tiles_x,
            tiles.tiles_y,
            tile_size,
            width,
            height,
            trans,
            last,
            grad_color,
            grad_trans.contiguous(),
            ctx.absgrad,
        )
        v_gaussians = torch.zeros(len(gaussians), v_pairs.shape[1], dtype=gaussians.dtype).index_add_(
            0, tiles.gaussians, v_pairs
        )
        v_colors = torch.zeros_like(flat_colors).index_add_(0, tiles.gaussians, v_pair_colors)[:, :channels]
        if ctx.absgrad:
            means2d.absgrad = v_gaussians[:, 6:8].reshape(ctx.shape)
        v_gaussians = v_gaussians.reshape(*ctx.shape[:-1], -1)
        return (
            v_gaussians[..., :2],
            v_gaussians[..., 2:5],
            v_colors.reshape(*ctx.shape[:-1], -1),
            v_gaussians[..., 5],
            v_backgrounds,
            None,
            None,
            None,
            None,
            None,
        )


def median_depth(
    means2d: Tensor, conics: Tensor, opacities: Tensor, depths: Tensor, tiles, width: int, height: int, tile_size: int
) -> Tensor:
    """[C, H, W] depth of the Gaussian at which each pixel's transmittance falls below one half."""
    gaussians = pack_gaussians(means2d, conics, opacities)
    return _forward(gaussians, depths.reshape(-1, 1).contiguous(), tiles, depths.shape[0], tile_size, width, height)[3]
