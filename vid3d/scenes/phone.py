"""Phone-like footage of a procedural scene: what users bring, made here because no data set can
be downloaded. Someone walks part way around the scene holding a phone upright (720x1280
portrait): an arc whose distance and height drift, hand shake on top. Each frame then gets
motion blur along its image motion, an auto-exposure change, sensor noise and JPEG (photos) or
H.264 (video) compression. The true cameras come with the footage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

from .cameras import Cameras
from .procedural import make_scene
from .render import render

PORTRAIT = (720, 1280)  # width, height
FOV_DEG = 50.0  # horizontal, in portrait: a phone's main camera
LOOK_AT = np.array([0.0, 0.0, 0.4])  # the procedural scenes' centre (as orbit_cameras)
ARC_DEG = 150.0  # how far round the scene the walk goes
SHAKE_DEG = 0.6  # hand shake: standard deviation of the extra rotation per frame
EXPOSURE_SECONDS = 1 / 60  # shutter time: motion blur is the image motion over this long


@dataclass
class Footage:
    frames: np.ndarray  # uint8 [N, H, W, 3], degraded
    cameras: Cameras  # the true cameras (OpenCV axes)


def handheld_path(
    n: int, seed: int, width: int = PORTRAIT[0], height: int = PORTRAIT[1], walk_seconds: float = 20.0
) -> Cameras:
    """`n` cameras evenly spaced in time along a walk of `walk_seconds` round the scene."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    azimuth = np.radians(rng.uniform(0, 360) + ARC_DEG * t + 4.0 * np.sin(2 * np.pi * 1.3 * t))
    radius = 3.4 + 0.35 * np.sin(2 * np.pi * (0.6 * t + rng.uniform()))
    elevation = np.radians(22.0 + 6.0 * np.sin(2 * np.pi * (0.8 * t + rng.uniform())))
    eyes = LOOK_AT + radius[:, None] * np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], axis=1
    )
    eyes[:, 2] += 0.03 * np.sin(2 * np.pi * 1.8 * walk_seconds * t)  # steps
    wander = np.cumsum(rng.normal(0, 0.02, (n, 3)), axis=0)
    cams = Cameras.from_look_at(eyes, LOOK_AT + wander - wander.mean(0), width, height, FOV_DEG)
    for cam_to_world in cams.cam_to_world:  # hand shake: a small random rotation about the camera's centre
        cam_to_world[:3, :3] = cam_to_world[:3, :3] @ _rotation(np.radians(rng.normal(0, SHAKE_DEG, 3)))
    return cams


def degrade(image: np.ndarray, blur_px: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Motion blur along `blur_px` (the image motion during the exposure, pixels), exposure
    `gain`, and shot plus read noise; uint8 in and out."""
    length = float(np.hypot(*blur_px))
    x = image.astype(np.float32)
    if length >= 1.0:
        size = int(np.ceil(length)) | 1
        kernel = np.zeros((size, size), np.float32)
        centre, direction = size // 2, blur_px / length
        for s in np.linspace(-length / 2, length / 2, 4 * size):
            kernel[int(round(centre + s * direction[1])), int(round(centre + s * direction[0]))] += 1  # noqa: RUF046  # numpy 1.x rounds to a float
        x = cv2.filter2D(x, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
    x = x * gain
    x = x + rng.normal(0, 1, x.shape).astype(np.float32) * np.sqrt(0.6 * np.clip(x, 0, 255) + 4.0)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def phone_footage(
    seed: int, n: int, width: int = PORTRAIT[0], height: int = PORTRAIT[1], walk_seconds: float = 20.0
) -> Footage:
    """`n` degraded frames along the handheld walk round procedural scene `seed`."""
    rng = np.random.default_rng(seed + 1)
    cams = handheld_path(n, seed, width, height, walk_seconds)
    clean = render(make_scene(seed), cams, supersample=1).images
    # image motion of the ground round the scene between frames, scaled to the exposure time
    ground = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    pixels, _ = cams.project(ground)
    motion = np.gradient(pixels, axis=0).mean(1) * EXPOSURE_SECONDS / (walk_seconds / max(n - 1, 1))
    shake = rng.normal(0, 1.5, (n, 2))  # plus the hand's own jitter during the exposure
    gains = 1.0 + 0.12 * np.sin(2 * np.pi * (np.linspace(0, 1.5, n) + rng.uniform()))  # auto exposure drifts
    frames = np.stack([degrade(image, motion[i] + shake[i], gains[i], rng) for i, image in enumerate(clean)])
    return Footage(frames, cams)


def write_photos(footage: Footage, folder: Path, quality: int = 85) -> list[Path]:
    """IMG_0001.jpg ...: JPEG as a phone saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"IMG_{i + 1:04d}.jpg" for i in range(len(footage.frames))]
    for path, frame in zip(paths, footage.frames):
        iio.imwrite(path, frame, quality=quality)
    return paths


def write_video(footage: Footage, path: Path, fps: float) -> Path:
    """H.264 as a phone records it (ffmpeg's default quality)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, footage.frames, fps=fps, codec="libx264", plugin="FFMPEG")
    return path


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (radians)."""
    return cv2.Rodrigues(np.asarray(angles, dtype=np.float64))[0]
