"""The poses/ dataset in nerfstudio's format: transforms.json, images/ and sparse_pc.ply.

Follows nerfstudio's `colmap_to_json` exactly (OpenGL camera axes, and the same
`applied_transform` from COLMAP's world to a z-up world), so `ns-train splatfacto --data poses/`
treats our output like its own `ns-process-data` output.

This module owns the format: the writers below and `read_dataset`, the one reader every other
module uses. Conventions: the world is transforms.json's (z up); cameras come out of the reader
with OpenCV axes (x right, y down, looking along +z), as gsplat and COLMAP use them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imageio.v3 as iio
import numpy as np
from plyfile import PlyData, PlyElement

from vid3d.cameras import Camera

if TYPE_CHECKING:
    import pycolmap

TRANSFORMS_FILE = "transforms.json"
POINTS_FILE = "sparse_pc.ply"
IMAGES_DIR = "images"
REPORT_FILE = "report.json"  # how the poses were found: registered frames, errors, timings
SPARSE_DIR = "sparse/0"  # the COLMAP model, as COLMAP's undistorter writes it
# nerfstudio's applied_transform: COLMAP world (y down) -> z-up world; rows permuted and one negated.
APPLIED_TRANSFORM = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
# OpenCV camera axes (y down, looking along +z) <-> OpenGL's (y up, looking along -z); its own inverse.
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def flip_camera_axes(cam_to_world: np.ndarray) -> np.ndarray:
    """A camera-to-world matrix with OpenCV camera axes <-> the same camera with OpenGL axes
    (transforms.json's transform_matrix); the flip is its own inverse."""
    return np.asarray(cam_to_world) @ OPENCV_TO_OPENGL


@dataclass
class PosesDataset:
    """poses/ as read: one entry per registered image, in transforms.json order."""

    folder: Path
    names: list[str]  # image file names in images/
    cam_to_world: np.ndarray  # [N, 4, 4] float64, OpenCV camera axes, transforms.json world
    Ks: np.ndarray  # [N, 3, 3] pinhole intrinsics (the images are undistorted)
    width: int
    height: int
    points_file: str = POINTS_FILE  # transforms.json's ply_file_path

    def cameras(self) -> list[Camera]:
        """vid3d's cameras of the images, in transforms.json order."""
        return [Camera(c, K, self.width, self.height) for c, K in zip(self.cam_to_world, self.Ks)]

    @property
    def paths(self) -> list[Path]:
        return [self.folder / IMAGES_DIR / name for name in self.names]

    def images(self) -> np.ndarray:
        """uint8 [N, H, W, 3]."""
        return np.stack([iio.imread(path)[..., :3] for path in self.paths])

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The sparse point cloud: positions float32 [P, 3] and colours uint8 [P, 3]."""
        vertex = PlyData.read(str(self.folder / self.points_file))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
        rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
        return xyz, rgb


def read_dataset(poses_dir: Path) -> PosesDataset:
    """transforms.json (shared or per-frame intrinsics) as cameras in vid3d's convention."""
    meta = json.loads((poses_dir / TRANSFORMS_FILE).read_text())
    names, cam_to_world, Ks = [], [], []
    for frame in meta["frames"]:
        intrinsics = {**meta, **frame}  # per-frame intrinsics override shared ones
        names.append(Path(frame["file_path"]).name)
        cam_to_world.append(flip_camera_axes(frame["transform_matrix"]))
        Ks.append([[intrinsics["fl_x"], 0, intrinsics["cx"]], [0, intrinsics["fl_y"], intrinsics["cy"]], [0, 0, 1]])
    first = {**meta, **meta["frames"][0]}
    return PosesDataset(
        folder=poses_dir,
        names=names,
        cam_to_world=np.array(cam_to_world, dtype=np.float64),
        Ks=np.array(Ks, dtype=np.float64),
        width=int(first["w"]),
        height=int(first["h"]),
        points_file=meta.get("ply_file_path", POINTS_FILE),
    )


def write_transforms(out_dir: Path, frames: list[dict], shared: dict) -> None:
    """transforms.json: `shared` keys (intrinsics of a shared camera, applied_transform) and `frames`
    (each with file_path and transform_matrix, and its own intrinsics when not shared)."""
    transforms = {**shared, "frames": frames, "ply_file_path": POINTS_FILE}
    (out_dir / TRANSFORMS_FILE).write_text(json.dumps(transforms, indent=2))


def pinhole_intrinsics(K: np.ndarray, width: int, height: int) -> dict[str, float | int]:
    """A camera's size and pinhole intrinsics as transforms.json keys."""
    return {
        "w": int(width),
        "h": int(height),
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
    }


# The images are undistorted: nerfstudio writes this for COLMAP's PINHOLE model.
NO_DISTORTION = {"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "camera_model": "OPENCV"}


def write_nerfstudio(model: pycolmap.Reconstruction, out_dir: Path) -> None:
    """Write transforms.json and sparse_pc.ply for an undistorted (pinhole) model."""
    cameras = {
        cid: {**pinhole_intrinsics(cam.calibration_matrix(), cam.width, cam.height), **NO_DISTORTION}
        for cid, cam in model.cameras.items()
    }
    single = len(cameras) == 1
    frames = []
    for image_id, image in sorted(model.images.items(), key=lambda item: item[1].name):
        if not image.has_pose:
            continue
        frame = {
            "file_path": f"{IMAGES_DIR}/{image.name}",
            "transform_matrix": colmap_to_nerfstudio(image.cam_from_world().matrix()).tolist(),
            "colmap_im_id": image_id,
        }
        if not single:
            frame.update(cameras[image.camera_id])
        frames.append(frame)
    shared = dict(next(iter(cameras.values()))) if single else {}
    write_transforms(out_dir, frames, {**shared, "applied_transform": APPLIED_TRANSFORM.tolist()})
    write_points_ply(model, out_dir / POINTS_FILE)


def model_cameras(model: pycolmap.Reconstruction) -> dict[str, Camera]:
    """The posed images' cameras of an undistorted (pinhole) model by image name, in the world and
    axes `read_dataset` gives them (the same numbers as written to transforms.json and read back)."""
    return {
        image.name: Camera(
            flip_camera_axes(colmap_to_nerfstudio(image.cam_from_world().matrix())),
            model.cameras[image.camera_id].calibration_matrix(),
            model.cameras[image.camera_id].width,
            model.cameras[image.camera_id].height,
        )
        for image in model.images.values()
        if image.has_pose
    }


def colmap_to_nerfstudio(cam_from_world: np.ndarray) -> np.ndarray:
    """A COLMAP 3x4 world-to-camera pose -> nerfstudio's 4x4 camera-to-world (OpenGL axes, z-up world)."""
    world_to_cam = np.vstack([cam_from_world, [0, 0, 0, 1]])
    cam_to_world = flip_camera_axes(np.linalg.inv(world_to_cam))
    return np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]]) @ cam_to_world


def nerfstudio_to_colmap(transform_matrix: np.ndarray) -> np.ndarray:
    """Inverse of colmap_to_nerfstudio: a 4x4 world-to-camera matrix in COLMAP's world and axes."""
    cam_to_world = np.linalg.inv(np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]])) @ np.asarray(transform_matrix)
    return np.linalg.inv(flip_camera_axes(cam_to_world))


def write_points_ply(model: pycolmap.Reconstruction, path: Path) -> None:
    """The sparse points in the transforms.json world frame, with colours (x y z red green blue)."""
    points = list(model.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)
    xyz = xyz @ APPLIED_TRANSFORM[:, :3].T + APPLIED_TRANSFORM[:, 3]
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    write_ply(xyz, rgb, path)


def write_ply(xyz: np.ndarray, rgb: np.ndarray, path: Path) -> None:
    """A coloured point cloud (x y z red green blue), as nerfstudio's sparse_pc.ply."""
    vertex = np.empty(
        len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    vertex["x"], vertex["y"], vertex["z"] = xyz.T
    vertex["red"], vertex["green"], vertex["blue"] = rgb.T
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
