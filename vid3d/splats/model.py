"""Gaussian parameters: initialisation from points, rendering, and the standard 3DGS .ply file.

Parameters are stored as gsplat's trainer stores them (log scales, logit opacities, SH as sh0 and
shN), which is also the standard 3DGS .ply layout written by gsplat.exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from scipy.spatial import cKDTree

from vid3d.splats.rasterize import rasterization

SH_C0 = 0.28209479177387814  # spherical harmonic of degree 0
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
SPLATS_FILE = "splats.ply"  # the splats stage's main output, in splats/


def read_splats(splats_dir: Path, device: torch.device | str = "cpu") -> torch.nn.ParameterDict:
    """The trained Gaussians of a splats/ folder."""
    return load_ply(splats_dir / SPLATS_FILE, device)


def init_splats(
    points: np.ndarray,
    colors: np.ndarray,
    sh_degree: int,
    init_opacity: float,
    init_scale: float,
    generator: torch.Generator,
) -> torch.nn.ParameterDict:
    """Gaussians at the points, sized by the mean distance to their 3 nearest neighbours (as gsplat)."""
    n = len(points)
    distances, _ = cKDTree(points).query(points, k=min(4, n))
    mean_distance = np.sqrt((np.asarray(distances).reshape(n, -1)[:, 1:] ** 2).mean(1)).clip(min=1e-7)
    scales = torch.log(torch.tensor(mean_distance * init_scale, dtype=torch.float32))[:, None].repeat(1, 3)
    sh = torch.zeros(n, (sh_degree + 1) ** 2, 3)
    sh[:, 0] = (torch.tensor(colors, dtype=torch.float32) - 0.5) / SH_C0
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.tensor(points, dtype=torch.float32)),
            "scales": torch.nn.Parameter(scales),
            "quats": torch.nn.Parameter(torch.rand(n, 4, generator=generator)),
            "opacities": torch.nn.Parameter(torch.logit(torch.full((n,), init_opacity))),
            "sh0": torch.nn.Parameter(sh[:, :1].clone()),
            "shN": torch.nn.Parameter(sh[:, 1:].clone()),
        }
    )


def with_sh_degree(splats: torch.nn.ParameterDict, degree: int) -> torch.nn.ParameterDict:
    """The Gaussians with `degree` spherical harmonics: higher bands cut off or added as zeros."""
    shN = splats["shN"].data
    rest = (degree + 1) ** 2 - 1
    padded = torch.zeros(len(shN), rest, 3, dtype=shN.dtype, device=shN.device)
    padded[:, : min(rest, shN.shape[1])] = shN[:, :rest]
    return torch.nn.ParameterDict({**splats, "shN": torch.nn.Parameter(padded)})


def render(
    splats: torch.nn.ParameterDict,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int,
    backend: str = "auto",
    render_mode: str = "RGB",
    **kwargs,
):
    """Rasterize the splats from the given cameras: (colors [C, H, W, X], alphas, info)."""
    colors = torch.cat([splats["sh0"], splats["shN"]], dim=1)
    return rasterization(
        splats["means"],
        splats["quats"],
        torch.exp(splats["scales"]),
        torch.sigmoid(splats["opacities"]),
        colors,
        viewmats,
        Ks,
        width,
        height,
        sh_degree=sh_degree,
        backend=backend,
        render_mode=render_mode,
        tile_size=tile_size_for(backend, splats["means"].device),
        **kwargs,
    )


def tile_size_for(backend: str, device: torch.device) -> int:
    """gsplat's CUDA kernels are tuned for 16-pixel tiles; on the CPU the compiled compositing is
    fastest with 8 and the PyTorch one with 4 (benchmarks/raster.py: the smaller the tile, the
    fewer pixels a Gaussian is tried on, the more (tile, Gaussian) pairs to sort and gather)."""
    from vid3d.splats import cpu_kernel
    from vid3d.splats.rasterize import resolve_backend

    if resolve_backend(backend, device) == "gsplat":
        return 16
    return 8 if cpu_kernel.usable(torch.device(device), 8) else 4


def save_ply(splats: torch.nn.ParameterDict, path: Path) -> None:
    """The standard 3DGS .ply in Inria's layout, float32: x y z, nx ny nz (zeros), f_dc_0..2,
    f_rest_* (channel-major), opacity, scale_0..2, rot_0..3; non-finite Gaussians left out.

    Written here rather than through gsplat.exporter because gsplat leaves out the normals, and
    readers with a fixed record (Inria's SIBR viewer and its ports: 62 floats at SH degree 3) need them.
    """
    p = {name: splats[name].detach().cpu().float() for name in PARAM_NAMES}
    n = len(p["means"])
    rest = p["shN"].permute(0, 2, 1).reshape(n, -1)
    values = torch.cat(
        [p["means"], torch.zeros(n, 3), p["sh0"][:, 0], rest, p["opacities"].reshape(n, 1), p["scales"], p["quats"]],
        dim=1,
    )
    names = inria_properties(rest.shape[1])
    values = values[torch.isfinite(values).all(dim=1)].numpy()
    vertex = np.empty(len(values), dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = values[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))


def inria_properties(rest: int) -> list[str]:
    """The vertex properties of Inria's 3DGS .ply, in order, with `rest` f_rest_* coefficients."""
    return [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        *(f"f_rest_{i}" for i in range(rest)),
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]


def load_ply(path: Path, device: torch.device | str = "cpu") -> torch.nn.ParameterDict:
    """Read a standard 3DGS .ply back into parameters (gsplat has no loader)."""
    vertex = PlyData.read(str(path))["vertex"]
    names = vertex.data.dtype.names
    column = lambda prefix: np.stack([vertex[n] for n in names if n.startswith(prefix)], axis=1)
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    shN = np.stack([vertex[n] for n in rest], axis=1) if rest else np.zeros((len(vertex), 0))
    tensors = {
        "means": np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1),
        "scales": column("scale_"),
        "quats": column("rot_"),
        "opacities": np.asarray(vertex["opacity"]),
        "sh0": column("f_dc_")[:, None, :],
        "shN": shN.reshape(len(vertex), 3, -1).transpose(0, 2, 1),  # files store SH channel-major
    }
    return torch.nn.ParameterDict(
        {
            k: torch.nn.Parameter(torch.tensor(np.ascontiguousarray(v), dtype=torch.float32, device=device))
            for k, v in tensors.items()
        }
    )
