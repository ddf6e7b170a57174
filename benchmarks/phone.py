"""Phone-like footage end to end: `vid3d reconstruct --preset fast` on 50 photos and on a 20 s video.

    .venv/bin/python benchmarks/phone.py [--inputs photos,video] [--set poses.sift_max_side=1280 ...]
                                         [--poses-only]

The footage (vid3d.scenes.phone: procedural scene 3, a handheld walk of 150 degrees round it,
720x1280 portrait, shake, motion blur, exposure drift, noise; photos IMG_0001.jpg ... as JPEG q85,
the video as H.264 at 10 fps) is made once into runs/phone/ with its true cameras. Each input
runs on a fresh project. Printed per input: seconds of each stage (poses split into its parts),
frames registered, rotation error of the poses against the true cameras after a similarity
alignment (median and largest, degrees), held-out PSNR, Gaussians, and the whole run's seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vid3d.ingest import FramesIndex
from vid3d.metrics.poses import pose_errors
from vid3d.poses import read_dataset
from vid3d.project import Project
from vid3d.scenes.phone import handheld_path, phone_footage, write_photos, write_video

RUNS = Path("runs/phone")
SEED, PHOTOS, VIDEO_FPS, WALK_SECONDS = 3, 50, 10, 20.0


def footage(name: str) -> tuple[Path, np.ndarray]:
    """The input (made once) and its true camera-to-world matrices, one per photo or video frame."""
    n = PHOTOS if name == "photos" else int(VIDEO_FPS * WALK_SECONDS)
    path = RUNS / ("photos" if name == "photos" else "walk.mp4")
    if not path.exists():
        print(f"rendering {n} frames of {name} ...", flush=True)
        shot = phone_footage(SEED, n, walk_seconds=WALK_SECONDS)
        write_photos(shot, path) if name == "photos" else write_video(shot, path, VIDEO_FPS)
    return path, handheld_path(n, SEED, walk_seconds=WALK_SECONDS).cam_to_world


def source_numbers(frames_dir: Path) -> dict[str, int]:
    """Each kept frame's number in the footage (photo IMG_0007.jpg is 6; video frames by index)."""
    index = FramesIndex.read(frames_dir)
    return {e.file: (int(e.source[4:8]) - 1 if e.source else e.source_index) for e in index.frames}


def run(name: str, overrides: list[str], poses_only: bool = False) -> dict:
    path, truth = footage(name)
    project = RUNS / "projects" / name
    shutil.rmtree(project, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "vid3d.cli",
        "poses" if poses_only else "reconstruct",
        str(project),
        "--input",
        str(path),
        *([] if poses_only else ["--preset", "fast"]),
        "--json",  # the preset sets only splats
        *[arg for o in overrides for arg in ("--set", o)],
    ]
    began = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.time() - began
    if result.returncode != 0:
        print(result.stderr[-2000:])
        raise SystemExit(f"{name}: reconstruct failed (exit {result.returncode})")
    stages = Project(project).manifest()["stages"]
    poses_dir = Project(project).stage_dir("poses")
    poses = read_dataset(poses_dir)
    numbers = source_numbers(Project(project).stage_dir("frames"))
    errors = pose_errors(poses.cam_to_world, truth[[numbers[n] for n in poses.names]])["rotation_deg"]
    parts = json.loads((poses_dir / "report.json").read_text()).get("seconds", {})
    return {
        "input": name,
        "seconds": round(seconds, 1),
        "frames_s": round(stages["frames"]["timings"]["total"], 1),
        "poses_s": round(stages["poses"]["timings"]["total"], 1),
        "poses_parts_s": parts,
        "registered": f"{stages['poses']['metrics']['registered']}/{stages['poses']['metrics']['total']}",
        "rotation_error_deg": [round(float(np.median(errors)), 3), round(float(errors.max()), 3)],
        **splats_figures(stages.get("splats")),
    }


def splats_figures(splats: dict | None) -> dict:
    if splats is None:  # --poses-only
        return {"splats_s": None, "psnr": None, "gaussians": 0, "train_size": None}
    return {
        "splats_s": round(splats["timings"]["total"], 1),
        "psnr": splats["metrics"]["psnr"],
        "gaussians": splats["metrics"]["gaussians"],
        "train_size": splats["metrics"].get("train_size"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default="photos,video")
    parser.add_argument("--set", action="append", default=[], help="a setting for every run, as for vid3d --set")
    parser.add_argument(
        "--poses-only", action="store_true", help="stop after the poses stage (to compare its settings)"
    )
    args = parser.parse_args()
    rows = []
    for name in args.inputs.split(","):
        rows.append(run(name, args.set, args.poses_only))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n`vid3d {'poses' if args.poses_only else 'reconstruct'} --preset fast` {' '.join(args.set)}")
    print(
        "| input | frames s | poses s (features, matching, mapping, undistortion) | splats s | registered | "
        "rotation error median / max (deg) | held-out PSNR | Gaussians | total s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        parts = ", ".join(f"{v:.0f}" for k, v in r["poses_parts_s"].items())
        print(
            f"| {r['input']} | {r['frames_s']} | {r['poses_s']} ({parts}) | {r['splats_s']} | {r['registered']} | "
            f"{r['rotation_error_deg'][0]} / {r['rotation_error_deg'][1]} | {r['psnr']} | {r['gaussians']:,} | "
            f"{r['seconds']} |"
        )


if __name__ == "__main__":
    main()
