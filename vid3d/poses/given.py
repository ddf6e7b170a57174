"""Poses from known cameras (vid3d generate's cameras.json) instead of COLMAP, for frames whose
cameras are known: generated orbits, often too small for SIFT. Writes the same poses/ dataset.

With no structure from motion there are no sparse points: the Gaussians start from points spread
in a ball around where the cameras look, coloured by the frames they project into (like gsplat's
simple_trainer's random initialisation, but coloured).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from vid3d.errors import UserError
from vid3d.project import StageOutput

from .dataset import OPENCV_TO_OPENGL, write_ply


def read_cameras(path: Path) -> dict[int, dict]:
    """Cameras by frame number from a cameras.json ({"frames": [{"frame", "camera_to_world", "K", ...}]})."""
    try:
        entries = json.loads(path.read_text())["frames"]
        cameras = {int(e["frame"]): {"camera_to_world": np.asarray(e["camera_to_world"], dtype=np.float64),
                                     "K": np.asarray(e["K"], dtype=np.float64),
                                     "width": e.get("width")} for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a cameras file ({type(exc).__name__}: {exc}); expected vid3d generate's "
                        "cameras.json: {\"frames\": [{\"frame\", \"camera_to_world\", \"K\"}, ...]}") from None
    if any(c["camera_to_world"].shape != (4, 4) or c["K"].shape != (3, 3) for c in cameras.values()):
        raise UserError(f"{path}: every camera needs a 4x4 camera_to_world and a 3x3 K")
    return cameras


def poses_from_cameras(frames_dir: Path, cameras_file: Path, out_dir: Path, points: int = 20_000,
                       seed: int = 0) -> StageOutput:
    cameras = read_cameras(cameras_file)
    index = json.loads((frames_dir / "index.json").read_text())
    images_dir = out_dir / "images"
    images_dir.mkdir()
    frames, used = [], []
    for entry in index["frames"]:
        number = _source_number(entry)
        if number not in cameras:
            raise UserError(f"{cameras_file}: no camera for frame {number} ({entry['file']}); the cameras file must "
                            "list every generated frame")
        shutil.copy(frames_dir / entry["file"], images_dir / entry["file"])
        camera = dict(cameras[number])
        if camera["width"]:  # frames resized on ingest: scale the intrinsics with them
            camera["K"] = np.diag([index["width"] / camera["width"]] * 2 + [1.0]) @ camera["K"]
        K = camera["K"]
        frames.append({"file_path": f"images/{entry['file']}", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2],
                       "cy": K[1, 2], "w": index["width"], "h": index["height"],
                       "transform_matrix": (camera["camera_to_world"] @ OPENCV_TO_OPENGL).tolist()})
        used.append((images_dir / entry["file"], camera))
    transforms = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
                  "ply_file_path": "sparse_pc.ply"}
    (out_dir / "transforms.json").write_text(json.dumps(transforms, indent=2))
    xyz, rgb = _coloured_ball(used, points, seed)
    write_ply(xyz, rgb, out_dir / "sparse_pc.ply")
    report = {"source": "cameras", "cameras_file": str(cameras_file), "registered": len(frames),
              "total": len(frames), "initial_points": len(xyz)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return StageOutput(outputs=["transforms.json", "images", "sparse_pc.ply", "report.json"],
                       metrics={"registered": len(frames), "total": len(frames), "registered_fraction": 1.0,
                                "source": "cameras"})


def _source_number(entry: dict) -> int:
    """The generated frame an ingested frame came from (generate/frames/00012.png -> 12)."""
    if "source" in entry:
        return int(Path(entry["source"]).stem)
    return int(entry["source_index"])


def look_at_point(centres: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The point nearest to every camera's optical axis (least squares)."""
    eye = np.eye(3)
    A = sum(eye - np.outer(d, d) for d in directions)
    b = sum((eye - np.outer(d, d)) @ c for c, d in zip(centres, directions))
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _coloured_ball(used: list[tuple[Path, dict]], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    c2w = np.stack([camera["camera_to_world"] for _, camera in used])
    centres, directions = c2w[:, :3, 3], c2w[:, :3, 2]  # OpenCV: the camera looks along +z
    target = look_at_point(centres, directions)
    radius = 0.5 * float(np.median(np.linalg.norm(centres - target, axis=1)))
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(count, 3))
    xyz = target + radius * direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.random((count, 1)) ** (1 / 3)
    colours, seen = np.zeros((count, 3)), np.zeros(count)
    for path, camera in used[:: max(1, len(used) // 8)]:
        image = iio.imread(path)[..., :3] / 255.0
        world_to_cam = np.linalg.inv(camera["camera_to_world"])
        local = xyz @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        pixel = local @ camera["K"].T
        u, v = pixel[:, 0] / pixel[:, 2], pixel[:, 1] / pixel[:, 2]
        inside = (local[:, 2] > 0) & (u >= 0) & (v >= 0) & (u < image.shape[1] - 1) & (v < image.shape[0] - 1)
        colours[inside] += image[v[inside].astype(int), u[inside].astype(int)]
        seen[inside] += 1
    colours = np.where(seen[:, None] > 0, colours / np.maximum(seen, 1)[:, None], 0.5)
    return xyz, (colours * 255).round().astype(np.uint8)

