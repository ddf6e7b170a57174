"""vid3d's one camera type, and vid3d's cameras file (a generated video's cameras, or a user's).

Conventions: `cam_to_world` is a 4x4 camera-to-world matrix with OpenCV camera axes (x right, y down,
looking along +z, as gsplat and COLMAP use them); `K` the 3x3 pinhole intrinsics for images `width` x
`height` pixels. Intrinsics follow their images through `scale_intrinsics` (pixel edges stay on edges).

The cameras file (vid3d generate's `cameras.json`, also passed with --poses and --cameras):

    {"frames": [{"frame": 0, "camera_to_world": [[...] x4], "K": [[...] x3], "width": 64, "height": 64}, ...]}

"camera_to_world" is the file's name for `cam_to_world`; "width" and "height" are optional (files
without them have K for the frames as they are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vid3d.errors import UserError

CAMERAS_FILE = "cameras.json"


@dataclass
class Camera:
    cam_to_world: np.ndarray  # [4, 4] float64, OpenCV axes
    K: np.ndarray  # [3, 3] for images `width` x `height`
    width: int | None = None  # None: K is for the frames as they are
    height: int | None = None  # None: as tall as `width` and the frames' aspect make it

    def resized(self, width: int, height: int) -> Camera:
        """The camera of its images resized to `width` x `height`. A camera of unknown height scales
        its height with its width; one of unknown size has K for these images already."""
        if self.width is None:
            return Camera(self.cam_to_world, self.K, width, height)
        scale_x = width / self.width
        scale_y = height / self.height if self.height else scale_x
        return Camera(self.cam_to_world, scale_intrinsics(self.K, scale_x, scale_y), width, height)


def scale_intrinsics(K, scale_x: float, scale_y: float):
    """Intrinsics [..., 3, 3] (numpy or torch) for images resized by (scale_x, scale_y): the first two
    rows scaled (pixel edges stay on edges)."""
    scaled = K.clone() if hasattr(K, "clone") else np.array(K, dtype=np.float64)
    scaled[..., 0, :] *= scale_x
    scaled[..., 1, :] *= scale_y
    return scaled


def stacked(cameras: list[Camera]) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world [N, 4, 4] and intrinsics [N, 3, 3] of `cameras`, as float64 arrays."""
    cam_to_world = np.stack([np.asarray(camera.cam_to_world, dtype=np.float64) for camera in cameras])
    return cam_to_world, np.stack([np.asarray(camera.K, dtype=np.float64) for camera in cameras])


def write_cameras(path: Path, cameras: list[Camera]) -> None:
    """The cameras file: camera i is frame i."""
    frames = [
        {
            "frame": i,
            "camera_to_world": np.asarray(camera.cam_to_world).tolist(),
            "K": np.asarray(camera.K).tolist(),
            **({} if camera.width is None else {"width": camera.width}),
            **({} if camera.height is None else {"height": camera.height}),
        }
        for i, camera in enumerate(cameras)
    ]
    path.write_text(json.dumps({"frames": frames}, indent=1))


def read_cameras(path: Path) -> dict[int, Camera]:
    """Cameras by frame number from a cameras file ({"frames": [{"frame", "camera_to_world", "K", ...}]})."""
    try:
        entries = json.loads(path.read_text())["frames"]
        cameras = {
            int(e["frame"]): Camera(
                np.asarray(e["camera_to_world"], dtype=np.float64),
                np.asarray(e["K"], dtype=np.float64),
                e.get("width"),
                e.get("height"),
            )
            for e in entries
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path}: not a cameras file ({type(exc).__name__}: {exc}); expected vid3d generate's "
            'cameras.json: {"frames": [{"frame", "camera_to_world", "K"}, ...]}'
        ) from None
    if any(c.cam_to_world.shape != (4, 4) or c.K.shape != (3, 3) for c in cameras.values()):
        raise UserError(f"{path}: every camera needs a 4x4 camera_to_world and a 3x3 K")
    return cameras
