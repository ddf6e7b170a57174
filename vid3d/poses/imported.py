"""Poses taken as given from a dataset input (nerfstudio, instant-ngp or COLMAP; see
vid3d.ingest.datasets): frames/cameras/ -> poses/, the same dataset the other two ways write. No
structure from motion runs.

Cameras with lens distortion are undistorted to pinhole images with COLMAP's undistorter, as
poses.colmap does; when the undistorted cameras differ in size, every image is cropped about its
centre to the smallest, so the Gaussians train on one size. The dataset's points start the
Gaussians; a dataset without points gets poses.given's coloured ball around where the cameras look.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pycolmap

from vid3d import ui
from vid3d.cameras import Camera
from vid3d.ingest import FramesIndex
from vid3d.ingest.datasets import CAMERAS_DIR, read_dataset_cameras
from vid3d.project import StageOutput
from vid3d.ui import keep_signal_handlers, log

from .dataset import IMAGES_DIR, POINTS_FILE, REPORT_FILE, SPARSE_DIR, TRANSFORMS_FILE, write_nerfstudio
from .given import INITIAL_POINTS, coloured_ball

keep_signal_handlers()  # importing pycolmap put glog's failure-signal handler on SIGTERM


def poses_from_dataset(frames_dir: Path, out_dir: Path, seed: int = 0) -> StageOutput:
    distorted = any(camera.model.name != "PINHOLE" for camera in read_dataset_cameras(frames_dir).cameras.values())
    if distorted:
        log.info("poses: undistorting the dataset's images")
        _undistort(frames_dir, out_dir)
    else:
        shutil.copytree(frames_dir, out_dir / IMAGES_DIR, ignore=shutil.ignore_patterns(CAMERAS_DIR, "*.json"))
        (out_dir / SPARSE_DIR).mkdir(parents=True)
        read_dataset_cameras(frames_dir).write(out_dir / SPARSE_DIR)
    model = pycolmap.Reconstruction(out_dir / SPARSE_DIR)
    _crop_to_one_size(model, out_dir / IMAGES_DIR)
    points_given = model.num_points3D() > 0
    if not points_given:
        _add_ball_of_points(model, out_dir / IMAGES_DIR, seed)
    model.write(out_dir / SPARSE_DIR)
    write_nerfstudio(model, out_dir)

    total = model.num_reg_images()
    # Nothing was registered: the cameras were given. Say that, not COLMAP's "registered" measure.
    report = {
        "source": "dataset",
        "dataset": FramesIndex.read(frames_dir).source,
        "cameras_given": total,
        "total": total,
        "undistorted": distorted,
        "points3D": model.num_points3D(),
        "points": "dataset" if points_given else "ball around the cameras' target",
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return StageOutput(
        outputs=[TRANSFORMS_FILE, SPARSE_DIR, IMAGES_DIR, POINTS_FILE, REPORT_FILE],
        metrics={"cameras_given": total, "total": total, "source": "dataset", "points3D": model.num_points3D()},
    )


def _undistort(frames_dir: Path, out_dir: Path) -> None:
    """Pinhole images and model: out_dir/images and out_dir/sparse/0."""
    scratch = out_dir / "undistorted"
    pycolmap.logging.minloglevel = 0 if ui.verbose else 2  # COLMAP's own log is very chatty
    pycolmap.undistort_images(scratch, frames_dir / CAMERAS_DIR, frames_dir, output_type="COLMAP")
    shutil.move(scratch / "images", out_dir / IMAGES_DIR)
    (out_dir / SPARSE_DIR).parent.mkdir()
    shutil.move(scratch / "sparse", out_dir / SPARSE_DIR)
    shutil.rmtree(scratch)


def _crop_to_one_size(model: pycolmap.Reconstruction, images_dir: Path) -> None:
    """Crop every image about its centre to the smallest camera's size, principal points with them."""
    width = min(camera.width for camera in model.cameras.values())
    height = min(camera.height for camera in model.cameras.values())
    for camera_id, camera in model.cameras.items():
        if (camera.width, camera.height) == (width, height):
            continue
        left, top = (camera.width - width) // 2, (camera.height - height) // 2
        for image in model.images.values():
            if image.camera_id == camera_id:
                path = images_dir / image.name
                iio.imwrite(path, iio.imread(path)[top : top + height, left : left + width])
        camera.width, camera.height = width, height
        camera.principal_point_x -= left
        camera.principal_point_y -= top


def _add_ball_of_points(model: pycolmap.Reconstruction, images_dir: Path, seed: int) -> None:
    images = sorted(model.images.values(), key=lambda image: image.name)
    cameras = [
        Camera(
            np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])),
            model.cameras[image.camera_id].calibration_matrix(),
        )
        for image in images
    ]
    xyz, rgb = coloured_ball(cameras, lambda i: iio.imread(images_dir / images[i].name), INITIAL_POINTS, seed)
    for point, colour in zip(xyz, rgb):
        model.add_point3D(point, pycolmap.Track(), colour)
