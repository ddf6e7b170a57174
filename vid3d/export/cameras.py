"""The camera path asset: every camera of poses/ as poses_cameras.json, as nerfstudio's
camera_path.json (for ns-render camera-path) and as Nuke's camera.chan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vid3d.export import Asset
from vid3d.ingest import FramesIndex
from vid3d.poses import PosesDataset, read_dataset
from vid3d.poses.dataset import TRANSFORMS_FILE, flip_camera_axes

CAMERA_PATH_FPS = 24  # the path shows one poses/ camera per frame
PHOTO_FPS = 24.0  # frames of a photo folder: one a frame, in name order


def write(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    poses = read_dataset(poses_dir)
    cameras_file, camera_path_file, chan_file = asset.files
    (out_dir / cameras_file).write_text(json.dumps(camera_path(poses), indent=1))
    (out_dir / camera_path_file).write_text(json.dumps(nerfstudio_camera_path(poses), indent=1))
    times, _ = frame_times(poses, poses_dir.parent / "frames")
    (out_dir / chan_file).write_text(nuke_chan(poses, times))
    return {}


def nuke_chan(poses: PosesDataset, times: list[float]) -> str:
    """A line per camera in time order: frame, translate xyz, rotate xyz in degrees for Nuke's
    default rotation order ZXY (R = Ry Rx Rz), and the vertical field of view in degrees, as
    Nuke's Camera "import chan file" reads it. Nuke's camera looks along -z with y up."""
    from scipy.spatial.transform import Rotation

    lines = []
    for time, K, cam_to_world in sorted(zip(times, poses.Ks, poses.cam_to_world), key=lambda item: item[0]):
        matrix = flip_camera_axes(cam_to_world)
        rz, rx, ry = Rotation.from_matrix(matrix[:3, :3]).as_euler("zxy", degrees=True)  # extrinsic z, x, y
        vertical_fov = np.degrees(2 * np.arctan(poses.height / 2 / K[1, 1]))
        values = [*matrix[:3, 3], rx, ry, rz, vertical_fov]
        lines.append(f"{time:g} " + " ".join(f"{v:.6f}" for v in values))
    return "\n".join(lines) + "\n"


def frame_times(poses: PosesDataset, frames_dir: Path) -> tuple[list[float], float]:
    """Each camera's time code and the frame rate: a video's frame numbers at its rate; photos (or no
    frames/index.json) one frame each in name order at PHOTO_FPS."""
    index = FramesIndex.read(frames_dir) if (frames_dir / "index.json").is_file() else None
    if index is not None and index.fps:
        source = {entry.file: entry.source_index for entry in index.frames}
        if all(source.get(name) is not None for name in poses.names):
            return [float(source[name]) for name in poses.names], float(index.fps)
    order = {name: i for i, name in enumerate(sorted(poses.names))}
    return [float(order[name]) for name in poses.names], PHOTO_FPS


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
