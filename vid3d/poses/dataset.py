"""The poses/ dataset in nerfstudio's format: transforms.json and sparse_pc.ply.

Follows nerfstudio's `colmap_to_json` exactly (OpenGL camera axes, and the same
`applied_transform` from COLMAP's world to a z-up world), so `ns-train splatfacto --data poses/`
treats our output like its own `ns-process-data` output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
from plyfile import PlyData, PlyElement

# nerfstudio's applied_transform: COLMAP world (y down) -> z-up world; rows permuted and one negated.
APPLIED_TRANSFORM = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def write_nerfstudio(model: pycolmap.Reconstruction, out_dir: Path) -> None:
    """Write transforms.json and sparse_pc.ply for an undistorted (pinhole) model."""
    cameras = {cid: _camera_params(cam) for cid, cam in model.cameras.items()}
    single = len(cameras) == 1
    frames = []
    for image_id, image in sorted(model.images.items(), key=lambda item: item[1].name):
        if not image.has_pose:
            continue
        frame = {"file_path": f"images/{image.name}",
                 "transform_matrix": colmap_to_nerfstudio(image.cam_from_world().matrix()).tolist(),
                 "colmap_im_id": image_id}
        if not single:
            frame.update(cameras[image.camera_id])
        frames.append(frame)
    transforms = dict(next(iter(cameras.values()))) if single else {}
    transforms.update(frames=frames, applied_transform=APPLIED_TRANSFORM.tolist(), ply_file_path="sparse_pc.ply")
    (out_dir / "transforms.json").write_text(json.dumps(transforms, indent=2))
    write_points_ply(model, out_dir / "sparse_pc.ply")


def colmap_to_nerfstudio(cam_from_world: np.ndarray) -> np.ndarray:
    """A COLMAP 3x4 world-to-camera pose -> nerfstudio's 4x4 camera-to-world (OpenGL axes, z-up world)."""
    world_to_cam = np.vstack([cam_from_world, [0, 0, 0, 1]])
    cam_to_world = np.linalg.inv(world_to_cam) @ OPENCV_TO_OPENGL
    return np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]]) @ cam_to_world


def nerfstudio_to_colmap(transform_matrix: np.ndarray) -> np.ndarray:
    """Inverse of colmap_to_nerfstudio: a 4x4 world-to-camera matrix in COLMAP's world and axes."""
    cam_to_world = np.linalg.inv(np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]])) @ np.asarray(transform_matrix)
    return np.linalg.inv(cam_to_world @ OPENCV_TO_OPENGL)


def write_points_ply(model: pycolmap.Reconstruction, path: Path) -> None:
    """The sparse points in the transforms.json world frame, with colours (x y z red green blue)."""
    points = list(model.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)
    xyz = xyz @ APPLIED_TRANSFORM[:, :3].T + APPLIED_TRANSFORM[:, 3]
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    write_ply(xyz, rgb, path)


def write_ply(xyz: np.ndarray, rgb: np.ndarray, path: Path) -> None:
    """A coloured point cloud (x y z red green blue), as nerfstudio's sparse_pc.ply."""
    vertex = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                       ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = xyz.T
    vertex["red"], vertex["green"], vertex["blue"] = rgb.T
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


def _camera_params(camera: pycolmap.Camera) -> dict[str, float | int | str]:
    """Pinhole intrinsics as nerfstudio writes them for COLMAP's PINHOLE model."""
    return {"w": camera.width, "h": camera.height,
            "fl_x": float(camera.focal_length_x), "fl_y": float(camera.focal_length_y),
            "cx": float(camera.principal_point_x), "cy": float(camera.principal_point_y),
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "camera_model": "OPENCV"}
