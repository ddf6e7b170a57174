"""The mesh asset: depth and colour rendered from the Gaussians at every training camera, fused in
a TSDF (open3d), marching cubes, the largest pieces kept, optional decimation, vertex colours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch
import trimesh

from vid3d.config import ExportSettings
from vid3d.errors import UserError
from vid3d.export import Asset, parse_bbox, texture
from vid3d.splats.data import Dataset, load_dataset
from vid3d.splats.model import render
from vid3d.splats.rasterize import median_depth
from vid3d.ui import log, progress

VOXELS_PER_SCENE = 256  # default TSDF resolution: the cameras' extent over this many voxels
SDF_TRUNCATION_VOXELS = 4  # the TSDF's band either side of a surface, in voxels (open3d's examples use 4-5)
# Rendered depth farther than this many scene scales (the cameras' spread) is background, not fused.
DEPTH_LIMIT_SCENE_SCALES = 4


def write(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    settings = ExportSettings(**asset.settings)
    data = load_dataset(poses_dir, test_every=0, device=device)
    mesh = fuse_mesh(splats, data, settings, parse_bbox(settings.bbox))
    metrics = {"mesh_faces": len(mesh.faces), "mesh_vertices": len(mesh.vertices)}
    if settings.mesh_format != "ply" and settings.texture_size:
        mesh, baked = texture.bake_texture(mesh, texture.dataset_views(data), settings.texture_size)
        metrics.update(baked)
    texture.export_mesh(mesh, out_dir / asset.files[0])
    return metrics


def voxel_size(data: Dataset, settings: ExportSettings) -> float:
    return settings.voxel_size or data.scene_scale() / VOXELS_PER_SCENE


@torch.no_grad()
def fuse_mesh(
    splats: torch.nn.ParameterDict, data: Dataset, settings: ExportSettings, bbox: np.ndarray | None
) -> trimesh.Trimesh:
    """Depth (export.depth: median or expected) and colour at every training camera, fused in
    open3d's TSDF volume."""
    voxel = voxel_size(data, settings)
    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel,
        sdf_trunc=SDF_TRUNCATION_VOXELS * voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8,
    )
    sh_degree = int(round(np.sqrt(splats["shN"].shape[1] + 1))) - 1  # noqa: RUF046  # numpy 1.x rounds to a float
    depth_trunc = DEPTH_LIMIT_SCENE_SCALES * data.scene_scale()
    render_mode = "RGB+ED" if settings.depth == "expected" else "RGB"
    with progress("export: fusing depth", len(data.names)) as advance:
        for i in range(len(data.names)):
            rendered, alpha, _ = render(
                splats,
                data.viewmats[i : i + 1],
                data.Ks[i : i + 1],
                data.width,
                data.height,
                sh_degree,
                render_mode=render_mode,
            )
            alpha = alpha[0, ..., 0]
            colour = (rendered[0, ..., :3] / alpha.clamp(min=1e-6)[..., None]).clamp(0, 1)  # un-premultiplied
            depth = (
                rendered[0, ..., 3]
                if settings.depth == "expected"
                else median_depth(
                    splats["means"],
                    splats["quats"],
                    torch.exp(splats["scales"]),
                    torch.sigmoid(splats["opacities"]),
                    data.viewmats[i : i + 1],
                    data.Ks[i : i + 1],
                    data.width,
                    data.height,
                )[0]
            )
            depth = torch.where(alpha >= settings.alpha_threshold, depth, 0.0)
            volume.integrate(
                _rgbd(colour, depth, depth_trunc),
                _intrinsic(data, i),
                data.viewmats[i].cpu().numpy().astype(np.float64),
            )
            advance()
    fused = volume.extract_triangle_mesh()
    log.info("export: marching cubes gave %d faces", len(fused.triangles))
    if bbox is not None:
        fused = fused.crop(o3d.geometry.AxisAlignedBoundingBox(bbox[0], bbox[1]))
    fused = _largest_pieces(fused, settings.min_component)
    if settings.faces and len(fused.triangles) > settings.faces:
        fused = fused.simplify_quadric_decimation(target_number_of_triangles=settings.faces)
    if len(fused.triangles) == 0:
        raise UserError("export: the mesh is empty; check export.bbox, or lower export.alpha_threshold")
    colours = (np.asarray(fused.vertex_colors) * 255).round().astype(np.uint8)
    return trimesh.Trimesh(
        np.asarray(fused.vertices), np.asarray(fused.triangles), vertex_colors=colours, process=False
    )


def _rgbd(colour: torch.Tensor, depth: torch.Tensor, depth_trunc: float) -> o3d.geometry.RGBDImage:
    return o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray((colour * 255).round().byte().cpu().numpy())),
        o3d.geometry.Image(np.ascontiguousarray(depth.float().cpu().numpy())),
        depth_scale=1.0,
        depth_trunc=depth_trunc,
        convert_rgb_to_intensity=False,
    )


def _intrinsic(data: Dataset, i: int) -> o3d.camera.PinholeCameraIntrinsic:
    K = data.Ks[i].cpu().numpy()
    return o3d.camera.PinholeCameraIntrinsic(data.width, data.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])


def _largest_pieces(mesh: o3d.geometry.TriangleMesh, min_fraction: float) -> o3d.geometry.TriangleMesh:
    """Keep connected pieces with at least `min_fraction` of the largest piece's faces."""
    if len(mesh.triangles) == 0:
        return mesh
    clusters, sizes, _ = mesh.cluster_connected_triangles()
    clusters, sizes = np.asarray(clusters), np.asarray(sizes)
    mesh.remove_triangles_by_mask(sizes[clusters] < min_fraction * sizes.max())
    mesh.remove_unreferenced_vertices()
    return mesh
