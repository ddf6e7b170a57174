"""Regenerate examples/orbit.mp4 (a closed 360-degree orbit around procedural scene 0) and
examples/orbit.json, which says how it was made so that `vid3d demo` can rebuild the truth.

    .venv/bin/python examples/make_orbit.py
"""

import json
from pathlib import Path

import imageio.v3 as iio

from vid3d.scenes import make_scene, orbit_cameras, render

FRAMES, SIZE, FPS, SEED = 60, 256, 12, 0


def main() -> None:
    scene = make_scene(seed=SEED)
    frames = render(scene, orbit_cameras(FRAMES, width=SIZE, height=SIZE)).images
    out = Path(__file__).with_name("orbit.mp4")
    iio.imwrite(out, frames, plugin="FFMPEG", fps=FPS, codec="libx264", quality=9)
    truth = {
        "scene_seed": SEED,
        "frames": FRAMES,
        "width": SIZE,
        "height": SIZE,
        "fps": FPS,
        "orbit": "vid3d.scenes.orbit_cameras defaults",
    }
    out.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"{out}: {FRAMES} frames of {SIZE}x{SIZE}, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
