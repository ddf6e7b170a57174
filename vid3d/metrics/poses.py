"""Camera pose accuracy against known cameras, after a similarity alignment."""

from __future__ import annotations

import numpy as np
import pycolmap


def align_cameras(estimated_c2w: np.ndarray, true_c2w: np.ndarray) -> np.ndarray:
    """Map estimated camera-to-world poses (N,4,4; any world frame and scale, OpenCV axes) into
    the true world with the similarity that best fits the camera centres (pycolmap's Umeyama)."""
    sim = pycolmap.estimate_sim3d(estimated_c2w[:, :3, 3], true_c2w[:, :3, 3])
    if sim is None:
        raise ValueError("camera centres are degenerate; no similarity fits them")
    aligned = estimated_c2w.copy()
    rotation = sim.rotation.matrix()
    aligned[:, :3, :3] = rotation @ estimated_c2w[:, :3, :3]
    aligned[:, :3, 3] = (sim.scale * (rotation @ estimated_c2w[:, :3, 3].T)).T + sim.translation
    return aligned


def pose_errors(estimated_c2w: np.ndarray, true_c2w: np.ndarray) -> dict[str, np.ndarray]:
    """Per-camera rotation error (degrees) and position error (world units) after alignment."""
    aligned = align_cameras(estimated_c2w, true_c2w)
    relative = np.einsum("nji,njk->nik", true_c2w[:, :3, :3], aligned[:, :3, :3])
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    return {"rotation_deg": np.degrees(np.arccos(cos)),
            "position": np.linalg.norm(aligned[:, :3, 3] - true_c2w[:, :3, 3], axis=1)}
