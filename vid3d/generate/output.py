"""generate/: the generated video's folder. `write_video` writes it and `GeneratedVideo.read` is how
every other module reads it. Its cameras file is vid3d's cameras file (`vid3d.cameras`).

    generate/frames/00000.png ...   the frames
    generate/video.mp4              the same frames as H.264
    generate/metrics.json           warping error, flicker, loop closure
    generate/cameras.json           the frames' cameras (vid3d.cameras' format), when the model is
                                    camera-conditioned or the feedback loop was given cameras (--cameras)
    generate/splats.ply             the feedback loop's Gaussians (standard 3DGS layout), when it ran
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from vid3d.cameras import CAMERAS_FILE, Camera, read_cameras, write_cameras

FRAMES_DIR = "frames"
VIDEO_FILE = "video.mp4"
METRICS_FILE = "metrics.json"
SPLATS_FILE = "splats.ply"  # the same layout as splats/splats.ply


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

    def cameras(self) -> list[Camera] | None:
        """The frames' cameras in frame order; None: the model gave none."""
        if self.cameras_file is None:
            return None
        return [camera for _, camera in sorted(read_cameras(self.cameras_file).items())]


def write_video(out_dir: Path, frames: np.ndarray, fps: int, cameras: list[Camera] | None, metrics: dict) -> list[str]:
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
