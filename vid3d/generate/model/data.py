"""Training and held-out data: turntable orbits of simple procedural scenes, cached to disk.

Each clip is a full 360-degree orbit of `FRAMES` frames at a fixed elevation; frame 0 is the
reference, so frame i is at azimuth `i * 360 / FRAMES` relative to it. Training windows are any
`window` consecutive frames of the (circular) orbit. Seeds >= HELD_OUT_SEED are never trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vid3d.scenes import make_scene, orbit_cameras, render

from . import RIG, SIZE

FRAMES = 48  # frames per orbit: 7.5 degrees apart
HELD_OUT_SEED = 1_000_000


def start_azimuth(seed: int) -> float:
    """The reference camera's absolute azimuth, varied per scene so light and layout vary with it."""
    return float(np.random.default_rng([seed, 7]).uniform(0.0, 360.0))


def orbit(seed: int, frames: int = FRAMES, size: int = SIZE):
    """The scene's orbit cameras; frame 0 is the reference."""
    return orbit_cameras(frames, width=size, height=size, start_deg=start_azimuth(seed), **RIG)


def render_orbit(seed: int, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """uint8 [frames, size, size, 3]: frame 0 is the reference, the camera turns counter-clockwise."""
    return render(make_scene(seed, simple=True), orbit(seed, frames, size), supersample=2).images


def render_orbit_start(seed: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `frames` frames of the orbit (7.5 degrees apart, uint8) and the masks of the scene's
    objects in them (what stands above the ground)."""
    cams = orbit(seed)[np.arange(frames)]
    truth = render(make_scene(seed, simple=True), cams, supersample=2)
    return truth.images, truth.mask & (cams.backproject(truth.depth)[..., 2] > 0.02)


def render_set(seeds, path: Path) -> np.ndarray:
    """Render (or load the cached) orbits of `seeds`: uint8 [scenes, frames, H, W, 3]."""
    path = Path(path)
    if path.exists():
        return np.load(path, mmap_mode="r")
    clips = np.stack([render_orbit(int(s)) for s in seeds])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, clips)
    tmp.rename(path)
    return clips


def held_out_seeds(n: int) -> range:
    return range(HELD_OUT_SEED, HELD_OUT_SEED + n)
