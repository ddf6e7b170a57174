"""A small project by hand for the USD tests: known cameras (each its own K, fx != fy, the principal
point off centre) in poses/, frames/index.json of a 12 fps video sampled every 5th frame, random
Gaussians of SH degree 2 in splats/ and a textured cube (a known texture and UVs) as export/mesh.glb."""

from __future__ import annotations

import json
import subprocess
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


def make_project(
    root: Path, mesh: trimesh.Trimesh | None = None, mesh_format: str = "glb", square_pixels: bool = False
) -> Path:
    cams = orbit_cameras(6, radius=4.0, width=WIDTH, height=HEIGHT, look_at=(0, 0, 0))
    poses = root / "poses"
    (poses / IMAGES_DIR).mkdir(parents=True)
    frames = []
    for i, cam_to_world in enumerate(cams.cam_to_world):
        fx = 150.0 + 10 * i
        K = np.array([[fx, 0, 76 + i], [0, fx if square_pixels else 140.0 + 5 * i, 62 - i], [0, 0, 1]])
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
    made = [name for name in mesh.files if (root / "export" / name).is_file()]  # as export records them
    keep = {"mesh": {"files": made, "fingerprint": mesh.fingerprint("splats"), "metrics": {}}}
    plan = ExportPlan("splats", [asset for asset in assets if asset.name != "mesh"], keep)
    out = root / "out"
    out.mkdir()
    written = export_assets(plan, root / "export", root / "splats", root / "poses", out, "cpu")
    (out / "assets.json").write_text(json.dumps(written.assets))  # what the manifest would record
    return out


def raycast_colours(mesh: trimesh.Trimesh, K: np.ndarray, cam_to_world: np.ndarray, width: int, height: int):
    """vid3d's view of a mesh through an OpenCV camera: each pixel centre's ray hits a face, its colour
    is the texture at the hit's uv (nearest texel) or the vertex colours blended by the barycentrics.
    Returns uint8 [H, W, 3] and the covered pixels [H, W]."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    directions = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    directions = directions @ cam_to_world[:3, :3].T
    origins = np.broadcast_to(cam_to_world[:3, 3], directions.shape)
    hits = scene.cast_rays(np.concatenate([origins, directions], -1).astype(np.float32))
    covered = np.isfinite(hits["t_hit"].numpy())
    face = np.where(covered, hits["primitive_ids"].numpy(), 0).astype(np.int64)
    b1, b2 = np.moveaxis(hits["primitive_uvs"].numpy(), -1, 0)
    weights = np.stack([1 - b1 - b2, b1, b2], -1)[..., None]  # open3d's uvs weigh the 2nd and 3rd vertex
    corners = mesh.faces[face]  # [H, W, 3]
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        uv = (mesh.visual.uv[corners] * weights).sum(-2)
        texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
        rows = np.clip(((1 - uv[..., 1]) * texture.shape[0]).astype(int), 0, texture.shape[0] - 1)
        cols = np.clip((uv[..., 0] * texture.shape[1]).astype(int), 0, texture.shape[1] - 1)
        colours = texture[rows, cols]
    else:
        colours = (np.asarray(mesh.visual.vertex_colors)[:, :3][corners] * weights).sum(-2).round().astype(np.uint8)
    return np.where(covered[..., None], colours, 0), covered


USD_IMPORT_SCRIPT = Path(__file__).with_name("blender_usd_import.py")
BPY_PYTHON = Path(__file__).parents[1] / ".venv-blender" / "bin" / "python"  # scripts/setup_blender.sh


def blender_usd_render(scene: Path, camera: str, frames: list[int], size: tuple[int, int], out: Path):
    """Blender 5 imports `scene` with its USD importer and renders the camera prim named `camera` at
    `frames` into out/frame_N.png (tests/blender_usd_import.py); the finished process."""
    out.mkdir(parents=True, exist_ok=True)
    job = {"scene": str(scene), "camera": camera, "frames": frames, "width": size[0], "height": size[1]}
    (out / "job.json").write_text(json.dumps({**job, "samples": 8, "out": str(out)}))
    result = subprocess.run(
        [str(BPY_PYTHON), str(USD_IMPORT_SCRIPT), str(out / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
