"""A small project by hand for the USD tests: known cameras (each its own K, fx != fy, the principal
point off centre) in poses/, frames/index.json of a 12 fps video sampled every 5th frame, random
Gaussians of SH degree 2 in splats/ and a textured cube (a known texture and UVs) as export/mesh.glb."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from vid3d.config import ExportSettings
from vid3d.export import ExportPlan, export_assets, requested_assets
from vid3d.ingest import FrameEntry, FramesIndex
from vid3d.poses.dataset import (
    IMAGES_DIR,
    POINTS_FILE,
    flip_camera_axes,
    pinhole_intrinsics,
    write_ply,
    write_transforms,
)
from vid3d.scenes import orbit_cameras
from vid3d.splats.model import save_ply

WIDTH, HEIGHT = 160, 120
FPS, STEP = 12.0, 5  # the video's rate; every STEP-th frame kept
GAUSSIANS, SH_DEGREE = 50, 2


def textured_cube() -> trimesh.Trimesh:
    """A 1 m cube at the origin, each face showing the whole texture: four coloured quadrants."""
    texture = np.zeros((64, 64, 3), np.uint8)
    texture[:32, :32], texture[:32, 32:], texture[32:, :32], texture[32:, 32:] = (
        (230, 40, 40),
        (40, 200, 40),
        (40, 60, 230),
        (240, 220, 40),
    )
    box = trimesh.creation.box((1, 1, 1))
    vertices = box.vertices[box.faces].reshape(-1, 3)  # three vertices of its own per face: UVs per face
    faces = np.arange(len(vertices)).reshape(-1, 3)
    normals = np.repeat(box.face_normals, 3, axis=0)
    axis = np.abs(normals).argmax(1)
    u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3
    rows = np.arange(len(vertices))
    uv = np.stack([vertices[rows, u_axis], vertices[rows, v_axis]], 1) + 0.5
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    return trimesh.Trimesh(
        vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False
    )


def make_project(root: Path, mesh: trimesh.Trimesh | None = None, mesh_format: str = "glb") -> Path:
    cams = orbit_cameras(6, radius=4.0, width=WIDTH, height=HEIGHT, look_at=(0, 0, 0))
    poses = root / "poses"
    (poses / IMAGES_DIR).mkdir(parents=True)
    frames = []
    for i, cam_to_world in enumerate(cams.cam_to_world):
        K = np.array([[150.0 + 10 * i, 0, 76 + i], [0, 140.0 + 5 * i, 62 - i], [0, 0, 1]])
        pose = {"file_path": f"{IMAGES_DIR}/{i:05d}.jpg", "transform_matrix": flip_camera_axes(cam_to_world).tolist()}
        frames.append({**pose, **pinhole_intrinsics(K, WIDTH, HEIGHT)})
    write_transforms(poses, frames[::-1], {})  # transforms.json's order is not time order
    rng = np.random.default_rng(0)
    write_ply(rng.uniform(-0.5, 0.5, (200, 3)), rng.integers(0, 256, (200, 3)), poses / POINTS_FILE)
    (root / "frames").mkdir()
    entries = [FrameEntry(f"{i:05d}.jpg", source_index=STEP * i, timestamp=STEP * i / FPS) for i in range(6)]
    FramesIndex("orbit.mp4", "video", 30, FPS, WIDTH, HEIGHT, entries).write(root / "frames")
    (root / "splats").mkdir()
    save_ply(random_splats(rng), root / "splats" / "splats.ply")
    (root / "export").mkdir()
    (mesh if mesh is not None else textured_cube()).export(root / "export" / f"mesh.{mesh_format}")
    return root


def random_splats(rng: np.random.Generator) -> torch.nn.ParameterDict:
    coefficients = torch.tensor(rng.normal(size=(GAUSSIANS, (SH_DEGREE + 1) ** 2, 3)), dtype=torch.float32)
    values = {
        "means": rng.uniform(-1, 1, (GAUSSIANS, 3)),
        "scales": rng.uniform(-4, -1, (GAUSSIANS, 3)),
        "quats": rng.normal(size=(GAUSSIANS, 4)),
        "opacities": rng.normal(size=GAUSSIANS),
    }
    params = {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}
    params |= {"sh0": coefficients[:, :1], "shN": coefficients[:, 1:]}
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})


def export_usd(root: Path, mesh_format: str = "glb") -> Path:
    """export/ -> out/ with the USD scene and the cameras asset, the mesh kept as it is."""
    settings = ExportSettings(mesh=False, usd=True, cameras=True, mesh_format=mesh_format)
    assets = requested_assets(settings)
    mesh = next(asset for asset in assets if asset.name == "mesh")
    keep = {"mesh": {"files": list(mesh.files), "fingerprint": mesh.fingerprint("splats"), "metrics": {}}}
    plan = ExportPlan("splats", [asset for asset in assets if asset.name != "mesh"], keep)
    out = root / "out"
    out.mkdir()
    export_assets(plan, root / "export", root / "splats", root / "poses", out, "cpu")
    return out
