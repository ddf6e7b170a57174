"""generate/: the generated video's folder. `write_video` writes it and `GeneratedVideo.read` is how
every other module reads it; `read_cameras` also reads a user's cameras file of the same format.

    generate/frames/00000.png ...   the frames
    generate/video.mp4              the same frames as H.264
    generate/metrics.json           warping error, flicker, loop closure
    generate/cameras.json           {"frames": [{"frame", "camera_to_world" (4x4, OpenCV axes), "K",
                                    "width", ...}]}, when the model is camera-conditioned or the
                                    feedback loop was given cameras (--cameras)
    generate/splats.ply             the feedback loop's Gaussians (standard 3DGS layout), when it ran
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from vid3d.errors import UserError

FRAMES_DIR = "frames"
VIDEO_FILE = "video.mp4"
METRICS_FILE = "metrics.json"
CAMERAS_FILE = "cameras.json"
SPLATS_FILE = "splats.ply"  # the same layout as splats/splats.ply


@dataclass
class Camera:
    camera_to_world: np.ndarray  # [4, 4], OpenCV axes
    K: np.ndarray  # [3, 3] for frames `width` pixels wide
    width: int | None  # None: K is for the frames as they are


@dataclass
class GeneratedVideo:
    frames_dir: Path
    cameras_file: Path | None  # None: the model gave no cameras
    splats_file: Path | None  # None: the feedback loop did not run

    @classmethod
    def read(cls, generate_dir: Path) -> GeneratedVideo:
        cameras, splats = generate_dir / CAMERAS_FILE, generate_dir / SPLATS_FILE
        return cls(
            generate_dir / FRAMES_DIR, cameras if cameras.is_file() else None, splats if splats.is_file() else None
        )

    def frame_paths(self) -> list[Path]:
        return sorted(self.frames_dir.glob("*.png"))

    def frames(self) -> np.ndarray:
        """uint8 [F, H, W, 3]."""
        return np.stack([iio.imread(path) for path in self.frame_paths()])


def camera_arrays(cameras: list[dict], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Cameras as the model adapters give them -> camera-to-world [F, 4, 4] and intrinsics [F, 3, 3]
    for frames `width` pixels wide (a camera without a width has K for the frames as they are)."""
    cam_to_world = np.stack([np.asarray(c["camera_to_world"], dtype=np.float64) for c in cameras])
    Ks = np.stack([np.asarray(c["K"], dtype=np.float64) for c in cameras])
    Ks[:, :2] *= np.array([width / (c.get("width") or width) for c in cameras])[:, None, None]
    return cam_to_world, Ks


def write_video(out_dir: Path, frames: np.ndarray, fps: int, cameras: list[dict], metrics: dict) -> list[str]:
    """Write the folder; returns its main outputs."""
    frames_dir = out_dir / FRAMES_DIR
    frames_dir.mkdir()
    for index, frame in enumerate(frames):
        iio.imwrite(frames_dir / f"{index:05d}.png", frame)
    iio.imwrite(out_dir / VIDEO_FILE, frames, fps=fps, codec="libx264", macro_block_size=1)
    outputs = [VIDEO_FILE, f"{FRAMES_DIR}/", METRICS_FILE]
    if cameras:
        write_cameras(out_dir / CAMERAS_FILE, cameras)
        outputs.append(CAMERAS_FILE)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return outputs


def write_cameras(path: Path, cameras: list[dict]) -> None:
    path.write_text(json.dumps({"frames": cameras}, indent=1, default=lambda array: np.asarray(array).tolist()))


def read_cameras(path: Path) -> dict[int, Camera]:
    """Cameras by frame number from a cameras.json ({"frames": [{"frame", "camera_to_world", "K", ...}]})."""
    try:
        entries = json.loads(path.read_text())["frames"]
        cameras = {
            int(e["frame"]): Camera(
                np.asarray(e["camera_to_world"], dtype=np.float64), np.asarray(e["K"], dtype=np.float64), e.get("width")
            )
            for e in entries
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path}: not a cameras file ({type(exc).__name__}: {exc}); expected vid3d generate's "
            'cameras.json: {"frames": [{"frame", "camera_to_world", "K"}, ...]}'
        ) from None
    if any(c.camera_to_world.shape != (4, 4) or c.K.shape != (3, 3) for c in cameras.values()):
        raise UserError(f"{path}: every camera needs a 4x4 camera_to_world and a 3x3 K")
    return cameras
