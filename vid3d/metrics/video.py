"""Temporal consistency of a video: warping error, flicker, loop closure, and object motion.

Frames are HxWx3 uint8 arrays; errors are in [0, 1] colour units.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

# forward-backward consistency test for occlusions (Sundaram et al., ECCV 2010)
OCCLUSION_ALPHA, OCCLUSION_BETA = 0.01, 0.5


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow from frame a to frame b (HxWx2, pixels), OpenCV's DIS at medium preset."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)


def horizontal_flow(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean horizontal flow (pixels) over each mask region, dilated by 2 px, for each pair of
    consecutive frames: Farneback's flow, which follows the small blurred objects of 64x64 frames."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    region = [cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in masks]
    flows = []
    for i in range(len(frames) - 1):
        flow = cv2.calcOpticalFlowFarneback(gray[i], gray[i + 1], None, 0.5, 2, 9, 3, 5, 1.1, 0)
        flows.append(flow[..., 0][region[i]].mean())
    return np.array(flows)


def object_motion(
    generated: np.ndarray, truth: np.ndarray, objects: np.ndarray, moving_px: float = 0.15
) -> tuple[np.ndarray, float]:
    """For each frame pair where the true objects move (more than moving_px), whether the generated
    ones move the same way; and their signed motion as a share of the true amount."""
    true_flow = horizontal_flow(truth, objects)
    moving = np.abs(true_flow) > moving_px
    sign = np.sign(true_flow[moving])
    flow = horizontal_flow(generated, objects)[moving]
    return np.sign(flow) == sign, float((flow * sign).mean() / np.abs(true_flow[moving]).mean())


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at x + flow(x): brings the next frame back onto the current one."""
    h, w = flow.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1).astype(np.float32) + flow
    return cv2.remap(image, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def visible_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow is undone by the backward flow (not occluded, not leaving the frame)."""
    h, w = forward.shape[:2]
    back = warp(backward, forward)
    mismatch = ((forward + back) ** 2).sum(-1)
    bound = OCCLUSION_ALPHA * ((forward**2).sum(-1) + (back**2).sum(-1)) + OCCLUSION_BETA
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1) + forward
    inside = (grid[..., 0] >= 0) & (grid[..., 0] <= w - 1) & (grid[..., 1] >= 0) & (grid[..., 1] <= h - 1)
    return (mismatch < bound) & inside


def warping_error(frames: list[np.ndarray]) -> float:
    """Mean squared difference between each frame and the next one warped onto it by optical flow,
    over the pixels visible in both; NaN when no pixel of any pair could be compared (not 0, the
    best value: nothing was measured)."""
    errors = []
    for a, b in itertools.pairwise(frames):
        forward, backward = optical_flow(a, b), optical_flow(b, a)
        mask = visible_mask(forward, backward)
        if mask.any():
            diff = (a.astype(np.float32) - warp(b, forward).astype(np.float32)) / 255.0
            errors.append(float((diff**2).sum(-1)[mask].mean()))
    return float(np.mean(errors)) if errors else float("nan")


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def adjacent_differences(frames: list[np.ndarray]) -> np.ndarray:
    return np.array([difference(a, b) for a, b in itertools.pairwise(frames)])


def flicker(frames: list[np.ndarray]) -> float:
    """Mean absolute difference of adjacent frames."""
    return float(adjacent_differences(frames).mean())


def loop_closure(frames: list[np.ndarray]) -> float:
    """Difference between the last and the first frame, relative to the median adjacent difference:
    about 1 for an orbit that closes on itself, more for one that drifted.

    Frames are compared blurred (sigma 5% of the width): unblurred, any two views of a finely
    textured scene differ about equally, near or far, and the ratio would say nothing.
    """
    sigma = max(1.0, 0.05 * frames[0].shape[1])
    blurred = [cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]
    return difference(blurred[-1], blurred[0]) / max(float(np.median(adjacent_differences(blurred))), 1e-8)


def video_metrics(frames: list[np.ndarray]) -> dict[str, float]:
    if len(frames) < 2:
        raise ValueError("need at least two frames")
    warp_error = warping_error(frames)
    return {
        "frames": len(frames),
        "warping_error": None if np.isnan(warp_error) else round(warp_error, 6),
        "flicker": round(flicker(frames), 6),
        "loop_closure": round(loop_closure(frames), 4),
    }


def load_frames(path) -> list[np.ndarray]:
    """Frames of a video file, an image folder, or a project (generate/frames/, else frames/)."""
    from pathlib import Path

    import imageio.v3 as iio

    from vid3d.errors import UserError
    from vid3d.generate.output import GeneratedVideo
    from vid3d.ingest import FramesIndex, check_input, image_files
    from vid3d.project import Project

    path = Path(path)
    project = Project(path)
    files = None
    if project.exists():
        generated, ingested = GeneratedVideo.read(project.stage_dir("generate")), project.stage_dir("frames")
        if generated.frames_dir.is_dir():
            files = generated.frame_paths()
        elif ingested.is_dir():
            files = FramesIndex.read(ingested).paths()
    if files is None:
        if check_input(path) == "video":
            return [np.ascontiguousarray(frame[..., :3]) for frame in iio.imiter(path, plugin="FFMPEG")]
        files = image_files(path)
    frames = [iio.imread(file)[..., :3] for file in files]
    if len({f.shape for f in frames}) > 1:
        raise UserError(f"{path}: the images differ in size; video metrics need frames of one size")
    return frames
