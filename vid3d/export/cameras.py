"""The camera path asset: every camera of poses/ as poses_cameras.json and as nerfstudio's
camera_path.json (for ns-render camera-path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vid3d.export import Asset
from vid3d.poses import PosesDataset, read_dataset
from vid3d.poses.dataset import TRANSFORMS_FILE, flip_camera_axes

CAMERA_PATH_FPS = 24  # the path shows one poses/ camera per frame


def write(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    poses = read_dataset(poses_dir)
    cameras_file, camera_path_file = asset.files
    (out_dir / cameras_file).write_text(json.dumps(camera_path(poses), indent=1))
    (out_dir / camera_path_file).write_text(json.dumps(nerfstudio_camera_path(poses), indent=1))
    return {}


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
