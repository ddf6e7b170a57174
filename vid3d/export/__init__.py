"""Export: assets from the trained Gaussians, in the world frame of poses/transforms.json.

mesh (TSDF fusion of depth and colour rendered at the training cameras, marching cubes, largest
pieces kept, optional decimation, vertex colours), splat (gsplat.exporter), point cloud
(Gaussian centres, outliers removed) and the camera path (vid3d's cameras.json and nerfstudio's
camera_path.json).

Exports accumulate in export/: each asset has its own fingerprint (its own settings and the
splats it was made from) and is rewritten only when that changes or with --force; assets made
from older splats are dropped. export/.stage.json records what made each file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import trimesh
from gsplat.exporter import export_splats

from vid3d.config import ExportSettings
from vid3d.device import resolve_device
from vid3d.errors import UserError
from vid3d.poses import PosesDataset, read_dataset
from vid3d.poses.dataset import TRANSFORMS_FILE, flip_camera_axes
from vid3d.project import Project, StageOutput, fingerprint
from vid3d.splats.data import Dataset, load_dataset
from vid3d.splats.model import PARAM_NAMES, SH_C0, read_splats, render, save_ply
from vid3d.splats.rasterize import median_depth
from vid3d.ui import log, progress

if TYPE_CHECKING:  # open3d loads in the functions that mesh: importing it takes seconds (issue 24)
    import open3d as o3d

SPLAT_SUFFIX = {"ply": "splat.ply", "splat": "splat.splat", "ply_compressed": "splat.compressed.ply"}
MESH_STEM = "mesh"  # mesh.ply, mesh.obj or mesh.glb
POINTCLOUD_FILE = "pointcloud.ply"
CAMERAS_FILE = "cameras.json"
CAMERA_PATH_FILE = "camera_path.json"  # nerfstudio's, for ns-render camera-path
CAMERA_PATH_FPS = 24  # the path shows one poses/ camera per frame
MESH_SETTINGS = ("mesh_format", "depth", "voxel_size", "faces", "bbox", "min_component", "alpha_threshold")
VOXELS_PER_SCENE = 256  # default TSDF resolution: the cameras' extent over this many voxels
SDF_TRUNCATION_VOXELS = 4  # the TSDF's band either side of a surface, in voxels (open3d's examples use 4-5)
# Rendered depth farther than this many scene scales (the cameras' spread) is background, not fused.
DEPTH_LIMIT_SCENE_SCALES = 4
OPAQUE = 0.5  # Gaussians above this opacity are points of the point cloud
# Statistical outlier removal as open3d's tutorial does it: a point whose mean distance to its 20
# neighbours is more than 2 standard deviations above the average is dropped.
OUTLIER_NEIGHBOURS, OUTLIER_STD_RATIO = 20, 2.0


def mesh_path(export_dir: Path) -> Path | None:
    """The exported mesh in an export/ folder, if there is one."""
    return next(iter(sorted(export_dir.glob(f"{MESH_STEM}.*"))), None)


@dataclass(frozen=True)
class Asset:
    """One kind of export: its name in the manifest (a new one replaces the old of the same name),
    its files and the settings that make it."""

    name: str
    files: tuple[str, ...]
    settings: dict[str, Any]

    def fingerprint(self, splats_fp: str) -> str:
        return fingerprint(f"export:{self.name}", self.settings, {"splats": splats_fp})


@dataclass
class ExportPlan:
    """What an export run writes (`build`) and which files of export/ it keeps (`keep`: manifest entries)."""

    splats_fp: str
    build: list[Asset]
    keep: dict[str, dict[str, Any]]

    def fingerprints(self) -> dict[str, str]:
        """Every asset export/ will hold, by name: the export stage's inputs."""
        return {
            **{name: entry["fingerprint"] for name, entry in self.keep.items()},
            **{asset.name: asset.fingerprint(self.splats_fp) for asset in self.build},
        }


def splat_formats(text: str) -> list[str]:
    formats = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in SPLAT_SUFFIX]
    if unknown:
        raise UserError(
            f"export.splat = {text!r}: unknown format {', '.join(unknown)}; use ply, splat or "
            "ply_compressed (several: --splat ply --splat splat)"
        )
    return list(dict.fromkeys(formats))


def requested_assets(settings: ExportSettings) -> list[Asset]:
    """The assets the settings ask for; a UserError when none, or when a setting is malformed."""
    parse_bbox(settings.bbox)
    assets = []
    if settings.mesh:
        assets.append(
            Asset(
                "mesh", (f"{MESH_STEM}.{settings.mesh_format}",), {key: getattr(settings, key) for key in MESH_SETTINGS}
            )
        )
    assets += [Asset(f"splat.{f}", (SPLAT_SUFFIX[f],), {"format": f}) for f in splat_formats(settings.splat)]
    if settings.pointcloud:
        assets.append(Asset("pointcloud", (POINTCLOUD_FILE,), {}))
    if settings.cameras:
        assets.append(Asset("cameras", (CAMERAS_FILE, CAMERA_PATH_FILE), {}))
    if not assets:
        raise UserError("export: nothing to write; pass --mesh, --splat, --pointcloud or --cameras")
    return assets


def plan_export(project: Project, settings: ExportSettings, splats_fp: str, force: bool) -> ExportPlan:
    """Keep what export/ holds that was made from these splats and is intact; build what is asked
    for and not there with the same fingerprint (everything asked for with `force`)."""
    previous = project.folder_record("export").get("assets", {})
    intact = project.intact_files("export")
    current = {
        name: entry
        for name, entry in previous.items()
        if entry.get("splats") == splats_fp and set(entry["files"]) <= intact
    }
    for name in set(previous) - set(current):
        log.info("export: dropping %s (made from other splats, or damaged)", ", ".join(previous[name]["files"]))
    build = [
        asset
        for asset in requested_assets(settings)
        if force or current.get(asset.name, {}).get("fingerprint") != asset.fingerprint(splats_fp)
    ]
    keep = {name: entry for name, entry in current.items() if name not in {asset.name for asset in build}}
    return ExportPlan(splats_fp, build, keep)


def export_assets(
    plan: ExportPlan, export_dir: Path, splats_dir: Path, poses_dir: Path, out_dir: Path, device: str = "auto"
) -> StageOutput:
    """Write the plan's new assets into out_dir beside links to the files it keeps from export_dir."""
    for entry in plan.keep.values():
        for name in entry["files"]:
            _link(export_dir / name, out_dir / name)
    entries, timings = dict(plan.keep), {}
    if plan.build:
        torch_device = resolve_device(device)
        splats = read_splats(splats_dir, torch_device)
        for asset in plan.build:
            start = time.perf_counter()
            metrics = write_asset(asset, splats, poses_dir, out_dir, torch_device)
            timings[asset.name] = time.perf_counter() - start
            entries[asset.name] = {
                "files": list(asset.files),
                "fingerprint": asset.fingerprint(plan.splats_fp),
                "settings": asset.settings,
                "splats": plan.splats_fp,
                "metrics": metrics,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
    entries = dict(sorted(entries.items()))
    return StageOutput(
        outputs=sorted(name for entry in entries.values() for name in entry["files"]),
        metrics={k: v for entry in entries.values() for k, v in entry["metrics"].items()},
        timings=timings,
        assets=entries,
    )


def write_asset(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    """Write one asset's files into out_dir; its metrics."""
    if asset.name == "mesh":
        settings = ExportSettings(**asset.settings)
        mesh = fuse_mesh(
            splats, load_dataset(poses_dir, test_every=0, device=device), settings, parse_bbox(settings.bbox)
        )
        mesh.export(out_dir / asset.files[0])
        return {"mesh_faces": len(mesh.faces), "mesh_vertices": len(mesh.vertices)}
    if asset.name == "splat.ply":  # with the normals fixed-record readers expect (see save_ply)
        save_ply(splats, out_dir / asset.files[0])
    elif asset.name.startswith("splat."):
        export_splats(
            *(splats[k].detach().cpu() for k in PARAM_NAMES),
            format=asset.settings["format"],
            save_to=str(out_dir / asset.files[0]),
        )
    elif asset.name == "pointcloud":
        cloud = point_cloud(splats)
        cloud.export(out_dir / POINTCLOUD_FILE)
        return {"points": len(cloud.vertices)}
    elif asset.name == "cameras":
        poses = read_dataset(poses_dir)
        (out_dir / CAMERAS_FILE).write_text(json.dumps(camera_path(poses), indent=1))
        (out_dir / CAMERA_PATH_FILE).write_text(json.dumps(nerfstudio_camera_path(poses), indent=1))
    return {}


def _link(source: Path, target: Path) -> None:
    """A kept file in the new export/ folder: a hard link (no copy of a large file), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def parse_bbox(text: str) -> np.ndarray | None:
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    box = np.array(values).reshape(2, 3) if len(values) == 6 else None
    if box is None or (box[0] >= box[1]).any():
        raise UserError(f"export.bbox = {text!r}: expected xmin,ymin,zmin,xmax,ymax,zmax with each min below its max")
    return box


def voxel_size(data: Dataset, settings: ExportSettings) -> float:
    return settings.voxel_size or data.scene_scale() / VOXELS_PER_SCENE


@torch.no_grad()
def fuse_mesh(
    splats: torch.nn.ParameterDict, data: Dataset, settings: ExportSettings, bbox: np.ndarray | None
) -> trimesh.Trimesh:
    """Depth (export.depth: median or expected) and colour at every training camera, fused in
    open3d's TSDF volume."""
    import open3d as o3d

    voxel = voxel_size(data, settings)
    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel,
        sdf_trunc=SDF_TRUNCATION_VOXELS * voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8,
    )
    sh_degree = int(round(np.sqrt(splats["shN"].shape[1] + 1))) - 1
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
    import open3d as o3d

    return o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray((colour * 255).round().byte().cpu().numpy())),
        o3d.geometry.Image(np.ascontiguousarray(depth.float().cpu().numpy())),
        depth_scale=1.0,
        depth_trunc=depth_trunc,
        convert_rgb_to_intensity=False,
    )


def _intrinsic(data: Dataset, i: int) -> o3d.camera.PinholeCameraIntrinsic:
    import open3d as o3d

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


def point_cloud(splats: torch.nn.ParameterDict) -> trimesh.PointCloud:
    """Centres of the opaque Gaussians, coloured by their view-independent colour, outliers removed."""
    import open3d as o3d

    keep = torch.sigmoid(splats["opacities"]) > OPAQUE
    points = splats["means"][keep].detach().cpu().numpy().astype(np.float64)
    colours = (splats["sh0"][keep, 0] * SH_C0 + 0.5).clamp(0, 1).detach().cpu().numpy()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    _, inliers = cloud.remove_statistical_outlier(nb_neighbors=OUTLIER_NEIGHBOURS, std_ratio=OUTLIER_STD_RATIO)
    return trimesh.PointCloud(points[inliers], colors=(colours[inliers] * 255).round().astype(np.uint8))


def camera_path(poses: PosesDataset) -> dict:
    """Every camera of poses/: intrinsics, OpenCV camera-to-world and nerfstudio's transform_matrix."""
    cameras = [
        {
            "name": name,
            "fx": float(K[0, 0]),
            "fy": float(K[1, 1]),
            "cx": float(K[0, 2]),
            "cy": float(K[1, 2]),
            "cam_to_world_opencv": cam_to_world.tolist(),
            "transform_matrix": flip_camera_axes(cam_to_world).tolist(),
        }
        for name, K, cam_to_world in zip(poses.names, poses.Ks, poses.cam_to_world)
    ]
    return {"width": poses.width, "height": poses.height, "frame": f"poses/{TRANSFORMS_FILE}", "cameras": cameras}


def nerfstudio_camera_path(poses: PosesDataset) -> dict:
    """The cameras of poses/ in order of their file names as nerfstudio's camera_path.json (what
    `ns-render camera-path` reads with get_path_from_json): camera_to_world row-major in OpenGL axes,
    the vertical field of view in degrees (nerfstudio puts the principal point at the centre)."""
    order = sorted(range(len(poses.names)), key=lambda i: poses.names[i])
    path = [
        {
            "camera_to_world": flip_camera_axes(poses.cam_to_world[i]).reshape(-1).tolist(),
            "fov": float(np.degrees(2 * np.arctan(poses.height / 2 / poses.Ks[i][1, 1]))),
            "aspect": poses.width / poses.height,
        }
        for i in order
    ]
    return {
        "camera_type": "perspective",
        "render_height": poses.height,
        "render_width": poses.width,
        "camera_path": path,
        "fps": CAMERA_PATH_FPS,
        "seconds": len(path) / CAMERA_PATH_FPS,
    }
