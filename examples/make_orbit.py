"""Regenerate examples/orbit.mp4: a closed 360-degree orbit around procedural scene 0.

    .venv/bin/python examples/make_orbit.py
"""

from pathlib import Path

import imageio.v3 as iio

from vid3d.scenes import make_scene, orbit_cameras, render

FRAMES, SIZE, FPS = 60, 256, 12


def main() -> None:
    scene = make_scene(seed=0)
    frames = render(scene, orbit_cameras(FRAMES, width=SIZE, height=SIZE)).images
    out = Path(__file__).with_name("orbit.mp4")
    iio.imwrite(out, frames, plugin="FFMPEG", fps=FPS, codec="libx264", quality=9)
    print(f"{out}: {FRAMES} frames of {SIZE}x{SIZE}, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
