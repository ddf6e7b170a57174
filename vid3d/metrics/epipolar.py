"""3D consistency of a video with known cameras, without fitting anything to it: epipolar error.

For a pair of frames with cameras (K, R, t) the fundamental matrix says on which line of the
second frame each pixel of the first must appear. Dense correspondences (DIS optical flow, kept
where the backward flow undoes the forward one) are measured against those lines: the symmetric
epipolar distance in pixels (the mean of each point's distance to the other's line). A video whose
frames show one static scene from those cameras scores near 0 whatever its content; objects that
wobble or slide score high. This is the measure of TSED (Yu et al. 2023), with flow instead of
SIFT (64-pixel frames have too few SIFT features).
"""

from __future__ import annotations

import cv2
import numpy as np

from vid3d.cameras import Camera, stacked
from vid3d.metrics.video import optical_flow, visible_mask

TEXTURE = 4.0  # grey-level gradient below which a pixel's flow is not trusted (flat regions slide)


def fundamental(K_a: np.ndarray, K_b: np.ndarray, cam_to_world_a: np.ndarray, cam_to_world_b: np.ndarray) -> np.ndarray:
    """F with x_b^T F x_a = 0 for pixels of one point (OpenCV camera axes)."""
    relative = np.linalg.inv(cam_to_world_b) @ cam_to_world_a  # camera a -> camera b
    R, t = relative[:3, :3], relative[:3, 3]
    t_cross = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(K_b).T @ t_cross @ R @ np.linalg.inv(K_a)


def symmetric_distance(F: np.ndarray, points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Per correspondence: the mean of each point's distance to the epipolar line of the other."""
    a = np.concatenate([points_a, np.ones((len(points_a), 1))], axis=1)
    b = np.concatenate([points_b, np.ones((len(points_b), 1))], axis=1)
    lines_b, lines_a = a @ F.T, b @ F  # lines in b of the points of a, and in a of those of b
    residual = np.abs((b * lines_b).sum(1))
    return 0.5 * (
        residual / np.hypot(lines_b[:, 0], lines_b[:, 1]).clip(1e-12)
        + residual / np.hypot(lines_a[:, 0], lines_a[:, 1]).clip(1e-12)
    )


def pair_error(frame_a: np.ndarray, frame_b: np.ndarray, F: np.ndarray) -> float | None:
    """Median symmetric epipolar distance of the trusted correspondences; None when there are none."""
    forward, backward = optical_flow(frame_a, frame_b), optical_flow(frame_b, frame_a)
    grey = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) / 8
    keep = visible_mask(forward, backward) & (gradient > TEXTURE)
    if keep.sum() < 8:
        return None
    v, u = np.nonzero(keep)
    points_a = np.stack([u, v], axis=1).astype(np.float64)
    return float(np.median(symmetric_distance(F, points_a, points_a + forward[v, u])))


def epipolar_error(
    frames: list[np.ndarray] | np.ndarray,
    cam_to_world: np.ndarray,
    Ks: np.ndarray,
    gaps: tuple[int, ...] = (1, 2),
    threshold_px: float = 1.0,
) -> dict[str, float]:
    """Over frame pairs `gaps` apart: the median of the pairs' median epipolar distances (pixels)
    and the share of pairs whose median is under `threshold_px` (TSED's consistent-pair rate)."""
    errors = []
    for gap in gaps:
        for i in range(len(frames) - gap):
            F = fundamental(Ks[i], Ks[i + gap], cam_to_world[i], cam_to_world[i + gap])
            error = pair_error(frames[i], frames[i + gap], F)
            if error is not None:
                errors.append(error)
    if not errors:
        return {"epipolar_px": float("nan"), "epipolar_consistent": 0.0}
    return {
        "epipolar_px": round(float(np.median(errors)), 4),
        "epipolar_consistent": round(float(np.mean(np.array(errors) < threshold_px)), 4),
    }


def camera_epipolar_error(frames: list[np.ndarray] | np.ndarray, cameras: dict[int, Camera]) -> dict[str, float]:
    """epipolar_error with cameras as vid3d.cameras.read_cameras gives them (by frame number), resized
    to the frames."""
    height, width = frames[0].shape[:2]
    order = sorted(cameras)[: len(frames)]
    return epipolar_error(frames, *stacked([cameras[i].resized(width, height) for i in order]))
