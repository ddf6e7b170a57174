"""The exported mesh's colours at the held-out cameras: the dense vertex-coloured mesh, the mesh
decimated to `--faces` with vertex colours, and decimated with a texture baked from each source
(the training images, which the export uses, or the Gaussians rendered at the training cameras).

    .venv/bin/python benchmarks/mesh_texture.py PROJECT [--faces 200000] [--sizes 1024,2048]

PROJECT is a trained project with export/mesh.ply (vid3d export PROJECT --mesh). The held-out
frames are splats training's (every --test-every-th: pass the project's splats.test_every); the
bake sees only the others. PSNR is over the pixels the mesh covers (coverage: their fraction of the frame).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
import trimesh

from vid3d.export import texture
from vid3d.metrics.mesh_render import psnr, raycasting_scene, render_mesh
from vid3d.project import Project
from vid3d.splats.data import Dataset, load_dataset
from vid3d.splats.model import read_splats, render


def held_out(mesh: trimesh.Trimesh, data: Dataset) -> dict[str, float]:
    scene, cameras = raycasting_scene(mesh), data.cameras()
    scores, coverage = [], []
    for i in data.test:
        camera = cameras[i]
        image, hit = render_mesh(mesh, camera.K, camera.cam_to_world, data.width, data.height, scene)
        scores.append(psnr(image, data.images[i].numpy(), hit))
        coverage.append(hit.mean())
    return {
        "faces": len(mesh.faces),
        "psnr": round(float(np.mean(scores)), 2),
        "coverage": round(float(np.mean(coverage)), 3),
    }


def decimated(mesh: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """As export.faces decimates (open3d's quadric decimation, vertex colours carried)."""
    dense = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.faces))
    dense.vertex_colors = o3d.utility.Vector3dVector(np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0)
    fewer = dense.simplify_quadric_decimation(target_number_of_triangles=faces)
    colours = (np.asarray(fewer.vertex_colors) * 255).round().astype(np.uint8)
    return trimesh.Trimesh(
        np.asarray(fewer.vertices), np.asarray(fewer.triangles), vertex_colors=colours, process=False
    )


@torch.no_grad()
def splat_views(splats: torch.nn.ParameterDict, data: Dataset) -> Iterator[texture.View]:
    """The Gaussians rendered at the training cameras (colour un-premultiplied by the opacity)."""
    sh_degree = int(round(np.sqrt(splats["shN"].shape[1] + 1))) - 1  # noqa: RUF046  # numpy 1.x rounds to a float
    cameras = data.cameras()
    for i in data.train:
        rendered, alpha, _ = render(
            splats, data.viewmats[i : i + 1], data.Ks[i : i + 1], data.width, data.height, sh_degree
        )
        colour = (rendered[0, ..., :3] / alpha[0].clamp(min=1e-6)).clamp(0, 1)
        yield texture.View(colour.cpu().numpy(), cameras[i].K, cameras[i].cam_to_world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--faces", type=int, default=200_000)
    parser.add_argument("--sizes", default="1024,2048")
    parser.add_argument("--test-every", type=int, default=8, help="the project's splats.test_every")
    args = parser.parse_args()
    project = Project(args.project)
    data = load_dataset(project.stage_dir("poses"), test_every=args.test_every)
    ply = o3d.io.read_triangle_mesh(str(project.stage_dir("export") / "mesh.ply"))  # trimesh loses its colours
    colours = (np.asarray(ply.vertex_colors) * 255).round().astype(np.uint8)
    dense = trimesh.Trimesh(np.asarray(ply.vertices), np.asarray(ply.triangles), vertex_colors=colours, process=False)
    fewer = decimated(dense, args.faces)
    rows = {"dense, vertex colours": held_out(dense, data), "decimated, vertex colours": held_out(fewer, data)}
    print(json.dumps(rows, indent=1), flush=True)
    splats = read_splats(project.stage_dir("splats"), "cpu")
    for size in [int(s) for s in args.sizes.split(",")]:
        for source in ("images", "splats"):
            views = texture.dataset_views(data, data.train) if source == "images" else splat_views(splats, data)
            start = time.perf_counter()
            textured, metrics = texture.bake_texture(fewer, views, size)
            row = {**held_out(textured, data), **metrics, "seconds": round(time.perf_counter() - start, 1)}
            rows[f"decimated, texture {size} from {source}"] = row
            print(json.dumps(row), flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
