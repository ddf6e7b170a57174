"""Forward+backward time and peak memory of the torch rasterization backend, with its compiled
compositing and with its PyTorch one, beside the dense reference (every Gaussian against every
pixel), on Gaussians spread over a procedural scene's surfaces as training initialises them (kNN
scales, SH degree 3).

    .venv/bin/python benchmarks/raster.py [--tile-size 8]

Each case runs in a fresh process so that its peak resident memory is its own.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).parents[1]
# (image size, Gaussians, layout): "scene" spreads them over a procedural scene's surfaces,
# "clustered" packs them into a small ball, so a few tiles hold most of them (uneven tiles)
CASES = [
    (128, 5_000, "scene"),
    (128, 20_000, "scene"),
    (128, 100_000, "scene"),
    (256, 5_000, "scene"),
    (256, 20_000, "scene"),
    (256, 100_000, "scene"),
    (256, 100_000, "clustered"),
]
DENSE_LIMIT = 1e8  # Gaussians x pixels above which the dense reference does not fit in memory


def scene_gaussians(n: int, size: int, layout: str = "scene", seed: int = 0):
    from scipy.spatial import cKDTree

    from vid3d.scenes import make_scene, orbit_cameras

    scene = make_scene(seed)
    points, faces = trimesh.sample.sample_surface(scene.mesh(), n, seed=seed)
    colors = scene.mesh().visual.face_colors[faces, :3] / 255.0
    if layout == "clustered":
        points = np.array([0.0, 0.0, 0.4]) + 0.15 * np.random.default_rng(seed).normal(size=(n, 3))
    dist, _ = cKDTree(points).query(points, k=4)
    scale = np.sqrt((dist[:, 1:] ** 2).mean(1))
    rng = np.random.default_rng(seed)
    sh = np.zeros((n, 16, 3))
    sh[:, 0] = (colors - 0.5) / 0.28209479177387814
    sh[:, 1:] = rng.normal(0, 0.05, (n, 15, 3))
    camera = orbit_cameras(1, width=size, height=size)
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
    return {
        "means": f32(points),
        "quats": f32(rng.normal(size=(n, 4))),
        "scales": f32(np.repeat(scale[:, None], 3, 1)),
        "opacities": f32(rng.uniform(0.1, 0.9, n)),
        "colors": f32(sh),
        "viewmats": f32(camera.world_to_cam()),
        "Ks": f32(camera.K),
        "width": size,
        "height": size,
    }


def run_case(size: int, n: int, layout: str, which: str, tile_size: int, repeats: int = 5) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from dense_reference import dense_reference

    from vid3d.splats.model import tile_size_for
    from vid3d.splats.rasterize import rasterization

    torch.set_num_threads(2)
    tile_size = tile_size or tile_size_for("torch", torch.device("cpu"))
    scene = scene_gaussians(n, size, layout)
    names = ("means", "quats", "scales", "opacities", "colors")
    times = []
    for _ in range(1 if which == "dense" else repeats):
        inputs = {k: v.clone().requires_grad_(k in names) if k in names else v for k, v in scene.items()}
        start = time.perf_counter()
        if which == "dense":
            image, alpha = dense_reference(**inputs, sh_degree=3)
        else:
            image, alpha, _info = rasterization(**inputs, sh_degree=3, tile_size=tile_size, backend="torch")
        (image.sum() + alpha.sum()).backward()
        times.append(time.perf_counter() - start)
    times = times[1:] if len(times) > 1 else times  # first call warms up
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": float(np.median(times)), "peak_mb": peak_mb, "coverage": float(alpha.detach().mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--tile-size",
        type=int,
        default=0,
        help="tile side in pixels; 0: what vid3d trains with (8 compiled, 4 PyTorch compositing)",
    )
    parser.add_argument(
        "--compare",
        default="compiled,torch,dense",
        help="compiled (C++ compositing), torch (PyTorch compositing), dense (reference)",
    )
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)  # size n layout which: one case, as JSON
    args = parser.parse_args()
    if args.case:
        size, n, layout, which = int(args.case[0]), int(args.case[1]), args.case[2], args.case[3]
        print(json.dumps(run_case(size, n, layout, which, args.tile_size)))
        return

    from rich.console import Console
    from rich.table import Table

    kinds = args.compare.split(",")
    table = Table(
        "image",
        "Gaussians",
        "layout",
        *(f"{k} {what}" for k in kinds for what in ("fwd+bwd (s)", "peak MB")),
        title=f"torch backend, tile {args.tile_size or 'as trained'}, 2 threads, {time.strftime('%Y-%m-%d')}",
    )
    for size, n, layout in CASES:
        row = [f"{size}x{size}", f"{n:,}", layout]
        for which in kinds:
            if which == "dense" and n * size * size > DENSE_LIMIT:
                row += ["—", f"~{n * size * size * 4 * 12 / 2**30:.0f} GB, skipped"]
                continue
            # "torch": the backend's PyTorch compositing, as where the compiled one cannot be built
            env = {**os.environ, "VID3D_CPU_KERNEL": "0" if which == "torch" else "1"}
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--tile-size",
                    str(args.tile_size),
                    "--case",
                    str(size),
                    str(n),
                    layout,
                    which,
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row += [f"{result['seconds']:.3f}", f"{result['peak_mb']:.0f}"]
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
