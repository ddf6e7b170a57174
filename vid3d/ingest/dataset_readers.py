"""Read the datasets users already have: nerfstudio / instant-ngp (transforms.json + images) and
COLMAP projects (sparse/0 + images/), each into one form: a pycolmap.Reconstruction of the posed
images in COLMAP's world and camera axes, their files, and the dataset's points when it has them.

transforms.json: OpenGL camera axes in `transform_matrix` (camera to world), intrinsics at the top
level or per frame (per-frame keys win); fl_x/fl_y/cx/cy/w/h, or instant-ngp's camera_angle_x
(and camera_angle_y) without fl_x; cx/cy default to the image centre, w/h to the image's size;
distortion k1 k2 k3 k4 p1 p2 with camera_model OPENCV (COLMAP's OPENCV, or FULL_OPENCV with k3/k4,
both OpenCV's own model) or OPENCV_FISHEYE (instant-ngp: is_fisheye). Its world becomes COLMAP's
through nerfstudio's applied_transform, so poses/transforms.json gives back the same matrices.

Frames (transforms.json) and images (COLMAP) whose image file is missing are skipped, as instant-ngp's
loader skips them (datasets are often filtered or pruned by hand): `DatasetInput.missing` names them.
Every other problem is a UserError naming the file and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pycolmap
from plyfile import PlyData

from vid3d.errors import UserError
from vid3d.ingest import IMAGE_SUFFIXES
from vid3d.ingest.dataset_layout import COLMAP_IMAGES_DIR, TRANSFORMS_FILE, colmap_model_dir
from vid3d.poses.dataset import APPLIED_TRANSFORM, nerfstudio_to_colmap
from vid3d.ui import keep_signal_handlers

keep_signal_handlers()  # importing pycolmap put glog's failure-signal handler on SIGTERM

DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
PERSPECTIVE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")  # nerfstudio's camera_model values of a lens
FISHEYE_MODELS = ("OPENCV_FISHEYE",)
ROTATION_TOLERANCE = 1e-3  # transform_matrix's rotation part may be this far from orthonormal (rounding)


@dataclass
class DatasetInput:
    """A dataset's posed images: the model names each image by its path in the dataset."""

    folder: Path
    format: str  # "nerfstudio" or "colmap"
    described_by: list[Path]  # the files holding the cameras (and points): fingerprinted with the images
    model: pycolmap.Reconstruction = field(repr=False)
    files: dict[int, Path] = field(default_factory=dict)  # image id -> image file
    missing: list[str] = field(default_factory=list)  # images the cameras name that are not there, skipped

    def ordered_ids(self) -> list[int]:
        """Image ids in natural order of their names (frame2 before frame10)."""
        return sorted(self.files, key=lambda image_id: natural_key(self.model.images[image_id].name))


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


# -- COLMAP projects ------------------------------------------------------------------------------
def read_colmap_project(folder: Path) -> DatasetInput:
    model_dir = colmap_model_dir(folder)
    images_dir = folder / COLMAP_IMAGES_DIR
    try:
        source = pycolmap.Reconstruction(model_dir)
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{model_dir}: not a readable COLMAP model ({reason}); export it again from COLMAP "
            "(File > Export model) or pass another --input"
        ) from None
    model_files = sorted(path for path in model_dir.iterdir() if path.is_file())
    dataset = DatasetInput(folder, "colmap", model_files, pycolmap.Reconstruction())
    cameras: dict[int, int] = {}  # the project's camera id -> ours
    for image in sorted(source.images.values(), key=lambda image: image.name):
        if not image.has_pose:
            continue
        file = images_dir / image.name
        if not file.is_file():
            dataset.missing.append(os.path.relpath(file, folder))
            continue
        if image.camera_id not in cameras:
            camera = _checked_camera(source.cameras[image.camera_id], model_dir)
            cameras[image.camera_id] = add_camera(dataset.model, camera)
        image_id = add_posed_image(dataset.model, image.name, cameras[image.camera_id], image.cam_from_world().matrix())
        dataset.files[image_id] = file
    if not dataset.files and not dataset.missing:
        raise UserError(f"{model_dir}: no posed images in this COLMAP model; pass a model with registered images")
    for point in source.points3D.values():
        dataset.model.add_point3D(point.xyz, pycolmap.Track(), point.color)
    return dataset


def _checked_camera(camera: pycolmap.Camera, where: Path) -> pycolmap.Camera:
    if not camera.is_perspective():
        raise UserError(
            f"{where}: camera {camera.camera_id} is {camera.model.name}, which vid3d cannot undistort "
            "to a pinhole camera; pass a model of perspective or fisheye cameras"
        )
    return camera


# -- nerfstudio and instant-ngp ---------------------------------------------------------------------
def read_transforms(folder: Path) -> DatasetInput:
    file = folder / TRANSFORMS_FILE
    meta = _load_json(file)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise UserError(f'{file}: needs a non-empty list "frames" of objects with file_path and transform_matrix')
    dataset = DatasetInput(folder, "nerfstudio", [file], pycolmap.Reconstruction())
    cameras: dict[tuple, int] = {}  # (model, size, params) -> camera id: frames with equal intrinsics share one
    for i, frame in enumerate(frames):
        where = f"{file}: frames[{i}]"
        image_file = _image_file(folder, frame, where)
        if image_file is None:
            dataset.missing.append(frame["file_path"])
            continue
        camera = _transforms_camera({**meta, **frame}, image_file, where)
        key = (camera.model.name, camera.width, camera.height, tuple(camera.params))
        if key not in cameras:
            cameras[key] = add_camera(dataset.model, camera)
        cam_from_world = nerfstudio_to_colmap(_transform_matrix(frame, where))[:3]
        image_id = add_posed_image(dataset.model, os.path.relpath(image_file, folder), cameras[key], cam_from_world)
        dataset.files[image_id] = image_file
    if meta.get("ply_file_path"):
        ply = folder / str(meta["ply_file_path"])
        dataset.described_by.append(ply)
        for xyz, rgb in zip(*_read_points(ply, file)):
            dataset.model.add_point3D(xyz, pycolmap.Track(), rgb)
    return dataset


def _load_json(file: Path) -> dict:
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fix = "fix it or write it again (ns-process-data, colmap2nerf)"
        raise UserError(f"{file}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f'{file}: expected a JSON object with "frames"; fix it or write it again')
    return meta


def _image_file(folder: Path, frame: dict, where: str) -> Path | None:
    """frame's file_path; without a suffix (NeRF's synthetic scenes) the image file of that name; None
    when there is no such file."""
    name = frame.get("file_path")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: no file_path; each frame names its image")
    path = folder / name
    if path.is_file():
        return path
    if not path.suffix:
        for suffix in sorted(IMAGE_SUFFIXES):
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    return None


def _transform_matrix(frame: dict, where: str) -> np.ndarray:
    try:
        matrix = np.array(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape not in ((4, 4), (3, 4)) or not np.isfinite(matrix).all():
        raise UserError(f"{where}: transform_matrix must be a 4x4 (or 3x4) matrix of numbers, camera to world")
    rotation = matrix[:3, :3]
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(rotation) < 0:
        raise UserError(
            f"{where}: transform_matrix's rotation is not a rotation (scaled or mirrored); "
            "write camera-to-world rotations with the scale in the translation"
        )
    u, _, vt = np.linalg.svd(rotation)  # the nearest exact rotation: the file's is rounded
    return np.vstack([np.hstack([u @ vt, matrix[:3, 3:]]), [0, 0, 0, 1]])


def _transforms_camera(keys: dict, image_file: Path, where: str) -> pycolmap.Camera:
    """The camera of one frame from its keys (per-frame over shared): a COLMAP camera model."""
    number = lambda key, default=None: _number(keys, key, where, default)
    width, height = number("w"), number("h")
    if width is None or height is None:
        height, width = _image_size(image_file)
    width, height = int(width), int(height)
    fx = number("fl_x")
    if fx is None:
        angle_x = number("camera_angle_x")
        if angle_x is None:
            raise UserError(f"{where}: no focal length; give fl_x (pixels) or camera_angle_x (radians)")
        fx = 0.5 * width / math.tan(0.5 * angle_x)
    fy = number("fl_y")
    if fy is None:
        angle_y = number("camera_angle_y")
        fy = fx if angle_y is None else 0.5 * height / math.tan(0.5 * angle_y)
    cx, cy = number("cx", width / 2), number("cy", height / 2)
    k1, k2, k3, k4, p1, p2 = (number(key, 0.0) for key in DISTORTION_KEYS)
    model = keys.get("camera_model", "OPENCV")
    if model in FISHEYE_MODELS or keys.get("is_fisheye") is True:
        return _camera("OPENCV_FISHEYE", width, height, [fx, fy, cx, cy, k1, k2, k3, k4])
    if model not in PERSPECTIVE_MODELS:
        raise UserError(
            f"{where}: camera_model {model} is not supported; vid3d takes "
            f"{', '.join(PERSPECTIVE_MODELS + FISHEYE_MODELS)} cameras"
        )
    if k3 or k4:
        return _camera("FULL_OPENCV", width, height, [fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, 0.0, 0.0])
    if k1 or k2 or p1 or p2:
        return _camera("OPENCV", width, height, [fx, fy, cx, cy, k1, k2, p1, p2])
    return _camera("PINHOLE", width, height, [fx, fy, cx, cy])


def _number(keys: dict, key: str, where: str, default: float | None = None) -> float | None:
    value = keys.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _image_size(image_file: Path) -> tuple[int, int]:
    try:
        shape = iio.improps(image_file).shape
    except Exception:  # noqa: BLE001  # each reader raises its own kind: all mean unreadable
        raise UserError(f"{image_file}: not a readable image; replace it or remove its frame") from None
    return int(shape[0]), int(shape[1])


def _read_points(ply: Path, transforms_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """ply_file_path's points (transforms.json's world) in COLMAP's world, with colours (grey when none)."""
    try:
        vertex = PlyData.read(str(ply))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    except Exception:  # noqa: BLE001  # plyfile raises many kinds: all mean not a point cloud
        raise UserError(
            f"{transforms_file}: ply_file_path {ply.name} is missing or not a point cloud (x y z); "
            "fix the path or remove the key"
        ) from None
    names = vertex.data.dtype.names
    rgb = (
        np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
        if {"red", "green", "blue"} <= set(names)
        else np.full((len(xyz), 3), 128, np.uint8)
    )
    rotation, translation = APPLIED_TRANSFORM[:, :3], APPLIED_TRANSFORM[:, 3]
    return (xyz - translation) @ rotation, rgb  # the inverse of applied_transform (a rotation)


# -- building the model -----------------------------------------------------------------------------
def _camera(model_name: str, width: int, height: int, params: list[float]) -> pycolmap.Camera:
    camera = pycolmap.Camera.create_from_model_name(0, model_name, 1.0, width, height)
    camera.params = params
    return camera


def add_camera(model: pycolmap.Reconstruction, camera: pycolmap.Camera) -> int:
    """A copy of `camera` added to the model (a lens without distortion as PINHOLE); its new id."""
    if camera.is_perspective_pinhole() and not any(camera.params[i] for i in camera.extra_params_idxs()):
        camera = _camera(
            "PINHOLE",
            camera.width,
            camera.height,
            [camera.focal_length_x, camera.focal_length_y, camera.principal_point_x, camera.principal_point_y],
        )
    else:
        camera = _camera(camera.model.name, camera.width, camera.height, list(camera.params))
    camera.camera_id = model.num_cameras() + 1
    model.add_camera_with_trivial_rig(camera)
    return camera.camera_id


def add_posed_image(model: pycolmap.Reconstruction, name: str, camera_id: int, cam_from_world: np.ndarray) -> int:
    """An image at a COLMAP pose (3x4 world to camera); its new id."""
    image_id = model.num_images() + 1
    model.add_image_with_trivial_frame(
        pycolmap.Image(name=name, camera_id=camera_id, image_id=image_id),
        pycolmap.Rigid3d(np.asarray(cam_from_world, dtype=np.float64)[:3]),
    )
    return image_id
