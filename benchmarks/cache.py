"""Time cached reruns of each stage command on a small finished project (issue 24 item 8).

.venv/bin/python benchmarks/cache.py [--repeats 5]

Builds a finished project first (12 rendered 96 px frames of a procedural orbit with their true
cameras, so no COLMAP; 10 training steps; the default exports on a coarse TSDF), then times each
command again on it: every stage must answer `cached`, so the time is vid3d's start-up and its
cache checks. Prints the first runs and the median and spread of the reruns (wall-clock seconds of
the whole process, as a user or a farm script waits for it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
from rich.console import Console
from rich.table import Table

from vid3d.scenes import make_scene, orbit_cameras, render

FRAMES, SIZE = 12, 96
TRAINING = ["--set", "splats.steps=10", "--set", "splats.checkpoint_every=1000"]  # its quality does not matter here
RERUNS = ["poses", "reconstruct", "export", "run"]


def vid3d(*args: str) -> tuple[float, dict]:
    """Run one command; its wall-clock seconds and its --json report."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "vid3d.cli", *args, "--json"], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"vid3d {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return seconds, json.loads(result.stdout)


def write_orbit(root: Path) -> tuple[Path, Path]:
    """The orbit's frames and its cameras file (vid3d generate's cameras.json format)."""
    cams = orbit_cameras(FRAMES, width=SIZE, height=SIZE)
    images = root / "images"
    images.mkdir()
    for i, image in enumerate(render(make_scene(3, simple=True), cams).images):
        iio.imwrite(images / f"{i:05d}.png", image)
    frames = [
        {"frame": i, "camera_to_world": c2w.tolist(), "K": K.tolist(), "width": SIZE, "height": SIZE}
        for i, (c2w, K) in enumerate(zip(cams.cam_to_world, cams.K))
    ]
    cameras = root / "cameras.json"
    cameras.write_text(json.dumps({"frames": frames}))
    return images, cameras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="cached reruns of each command")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp())
    try:
        images, cameras = write_orbit(root)
        project = str(root / "project")
        frames = ["--set", f"frames.count={FRAMES}", "--set", "frames.min_frames=8"]
        first = {
            "reconstruct": vid3d(
                "reconstruct", project, "--input", str(images), "--poses", str(cameras), *frames, *TRAINING
            )[0],
            "export": vid3d("export", project, "--voxel-size", "0.1")[0],
        }
        table = Table(title=f"cached reruns on a finished project ({FRAMES} frames, {SIZE} px), seconds")
        for column in ("command", "first run", "cached: median", "min", "max"):
            table.add_column(column, justify="left" if column == "command" else "right")
        for command in RERUNS:
            times = []
            for _ in range(args.repeats):
                seconds, report = vid3d(command, project)
                ran = [stage for stage, r in report["stages"].items() if r["status"] != "cached"]
                if ran:
                    sys.exit(f"vid3d {command}: {', '.join(ran)} ran again instead of answering cached")
                times.append(seconds)
            made = f"{first[command]:.2f}" if command in first else ""
            table.add_row(
                f"vid3d {command} P", made, f"{statistics.median(times):.2f}", f"{min(times):.2f}", f"{max(times):.2f}"
            )
        Console().print(table)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
