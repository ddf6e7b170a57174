"""Poses from known cameras (vid3d's cameras file, vid3d.cameras) instead of COLMAP, for frames whose
cameras are known: generated orbits, often too small for SIFT. Writes the same poses/ dataset.

With no structure from motion there are no sparse points: the Gaussians start from points spread
in a ball around where the cameras look, coloured by the frames they project into (like gsplat's
simple_trainer's random initialisation, but coloured).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from vid3d.cameras import Camera, read_cameras
from vid3d.errors import UserError
from vid3d.ingest import FrameEntry, FramesIndex
from vid3d.project import StageOutput

from .dataset import (
    IMAGES_DIR,
    NO_DISTORTION,
    POINTS_FILE,
    REPORT_FILE,
    TRANSFORMS_FILE,
    flip_camera_axes,
    pinhole_intrinsics,
    write_ply,
    write_transforms,
)

INITIAL_POINTS = 20_000  # gsplat's simple_trainer starts random initialisations with 100,000; a CPU run needs fewer
# The initial points fill a ball around the point the cameras look at, reaching half way to the
# cameras: the object is in there, and no point starts in front of a camera's lens.
BALL_FRACTION = 0.5
COLOUR_VIEWS = 8  # frames whose pixels colour the initial points (evenly spaced)


def poses_from_cameras(
    frames_dir: Path, cameras_file: Path, out_dir: Path, points: int = INITIAL_POINTS, seed: int = 0
) -> StageOutput:
    cameras = read_cameras(cameras_file)
    index = FramesIndex.read(frames_dir)
    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir()
    frames, used = [], []
    for entry in index.frames:
        number = source_number(entry)
        if number not in cameras:
            raise UserError(
                f"{cameras_file}: no camera for frame {number} ({entry.file}); the cameras file must "
                "list every generated frame"
            )
        shutil.copy(frames_dir / entry.file, images_dir / entry.file)
        camera = cameras[number].resized(index.width, index.height)  # frames resized on ingest: K with them
        frames.append(
            {
                "file_path": f"{IMAGES_DIR}/{entry.file}",
                **pinhole_intrinsics(camera.K, index.width, index.height),
                "transform_matrix": flip_camera_axes(camera.cam_to_world).tolist(),
            }
        )
        used.append((images_dir / entry.file, camera))
    write_transforms(out_dir, frames, shared=NO_DISTORTION)
    xyz, rgb = coloured_ball([camera for _, camera in used], lambda i: iio.imread(used[i][0]), points, seed)
    write_ply(xyz, rgb, out_dir / POINTS_FILE)
    # Nothing was registered: the cameras were given. Say that, not COLMAP's "registered" measure.
    report = {
        "source": "cameras",
        "cameras_file": str(cameras_file),
        "cameras_given": len(frames),
        "total": len(frames),
        "initial_points": len(xyz),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return StageOutput(
        outputs=[TRANSFORMS_FILE, IMAGES_DIR, POINTS_FILE, REPORT_FILE],
        metrics={"cameras_given": len(frames), "total": len(frames), "source": "cameras"},
    )


def source_number(entry: FrameEntry) -> int:
    """The generated frame an ingested frame came from (generate/frames/00012.png -> 12)."""
    if entry.source is not None:
        return int(Path(entry.source).stem)
    return int(entry.source_index)


def look_at_point(centres: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The point nearest to every camera's optical axis (least squares)."""
    eye = np.eye(3)
    A = sum(eye - np.outer(d, d) for d in directions)
    b = sum((eye - np.outer(d, d)) @ c for c, d in zip(centres, directions))
    return np.linalg.lstsq(A, b, rcond=None)[0]


def coloured_ball(
    cameras: list[Camera], image_of: Callable[[int], np.ndarray], count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` points (float64, uint8 colours) in a ball around where the cameras look, coloured from
    up to COLOUR_VIEWS of their images (`image_of(i)`, uint8, the size the cameras' K is for)."""
    cam_to_world = np.stack([camera.cam_to_world for camera in cameras])
    centres, directions = cam_to_world[:, :3, 3], cam_to_world[:, :3, 2]  # OpenCV: the camera looks along +z
    target = look_at_point(centres, directions)
    radius = BALL_FRACTION * float(np.median(np.linalg.norm(centres - target, axis=1)))
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(count, 3))
    xyz = target + radius * direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.random((count, 1)) ** (
        1 / 3
    )
    colours, seen = np.zeros((count, 3)), np.zeros(count)
    for i in range(0, len(cameras), max(1, len(cameras) // COLOUR_VIEWS)):
        image = image_of(i)[..., :3] / 255.0
        world_to_cam = np.linalg.inv(cameras[i].cam_to_world)
        local = xyz @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        pixel = local @ cameras[i].K.T
        u, v = pixel[:, 0] / pixel[:, 2], pixel[:, 1] / pixel[:, 2]
        inside = (local[:, 2] > 0) & (u >= 0) & (v >= 0) & (u < image.shape[1] - 1) & (v < image.shape[0] - 1)
        colours[inside] += image[v[inside].astype(int), u[inside].astype(int)]
        seen[inside] += 1
    colours = np.where(seen[:, None] > 0, colours / np.maximum(seen, 1)[:, None], 0.5)
    return xyz, (colours * 255).round().astype(np.uint8)
