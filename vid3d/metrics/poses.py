"""Camera pose accuracy against known cameras, after a similarity alignment."""

from __future__ import annotations

import numpy as np
import pycolmap

from vid3d.ui import keep_signal_handlers

keep_signal_handlers()  # importing pycolmap put glog's failure-signal handler on SIGTERM


def similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, rotation, translation) best mapping source points (N,3) onto target (pycolmap's Umeyama)."""
    sim = pycolmap.estimate_sim3d(source.astype(np.float64), target.astype(np.float64))
    if sim is None:
        raise ValueError("the points are degenerate; no similarity fits them")
    return float(sim.scale), sim.rotation.matrix(), np.asarray(sim.translation)


def align_cameras(estimated_cam_to_world: np.ndarray, true_cam_to_world: np.ndarray) -> np.ndarray:
    """Map estimated camera-to-world poses (N,4,4; any world frame and scale, OpenCV axes) into
    the true world with the similarity that best fits the camera centres."""
    scale, rotation, translation = similarity(estimated_cam_to_world[:, :3, 3], true_cam_to_world[:, :3, 3])
    aligned = estimated_cam_to_world.copy()
    aligned[:, :3, :3] = rotation @ estimated_cam_to_world[:, :3, :3]
    aligned[:, :3, 3] = scale * estimated_cam_to_world[:, :3, 3] @ rotation.T + translation
    return aligned


def pose_errors(estimated_cam_to_world: np.ndarray, true_cam_to_world: np.ndarray) -> dict[str, np.ndarray]:
    """Per-camera rotation error (degrees) and position error (world units) after alignment."""
    aligned = align_cameras(estimated_cam_to_world, true_cam_to_world)
    relative = np.einsum("nji,njk->nik", true_cam_to_world[:, :3, :3], aligned[:, :3, :3])
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    return {
        "rotation_deg": np.degrees(np.arccos(cos)),
        "position": np.linalg.norm(aligned[:, :3, 3] - true_cam_to_world[:, :3, 3], axis=1),
    }
