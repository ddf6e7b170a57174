"""Where the poses stage's time goes, and what each [poses] setting buys: phone photos and video.

    .venv/bin/python benchmarks/poses_steps.py [--inputs photos,video] [--variants default,overlap5,...]

The footage is benchmarks/phone.py's (procedural scene 3, 720x1280, 50 photos or a 20 s video),
ingested once by `vid3d frames`. Each variant runs the poses stage's own code
(`vid3d.poses.colmap.estimate_poses`) on those frames, one after another in one process, so the
rows compare on one machine on one day. Printed per row: features, matching, mapping and
undistortion seconds, the total, frames registered, and the rotation error against the true
cameras after a similarity alignment (median and largest, degrees).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from phone import RUNS, footage, source_numbers

from vid3d.config import PosesSettings
from vid3d.metrics.poses import pose_errors
from vid3d.poses import colmap, read_dataset
from vid3d.project import Project

# each variant: [poses] settings over the defaults; "before" is the stage before issue 27 (COLMAP's
# 10,000 verification trials and its low-quality bundle-adjustment preset alone)
COLMAP_LOW_QUALITY = {
    k: v for k, v in colmap.FAST_BUNDLE_ADJUSTMENT.items() if "local" not in k and "threading" not in k
}
VARIANTS = {
    "before": {"verify_trials": 10000, "_bundle_adjustment": COLMAP_LOW_QUALITY},
    "default": {},
    "overlap5": {"overlap": 5},
    "features2048": {"max_features": 2048},
    "global": {"mapper": "global"},
    "side800": {"sift_max_side": 800},
    "octave0": {"sift_first_octave": 0, "sift_max_side": 1280},  # the fast preset's SIFT
}


def frames_of(name: str) -> tuple[Path, np.ndarray]:
    """The footage's frames folder (ingested once) and the true camera of each kept frame."""
    path, truth = footage(name)
    project = RUNS / "projects" / f"steps-{name}"
    if not (project / "frames" / "index.json").exists():
        shutil.rmtree(project, ignore_errors=True)
        command = [sys.executable, "-m", "vid3d.cli", "frames", str(project), "--input", str(path), "--json"]
        subprocess.run(command, check=True, capture_output=True)
    return Project(project).stage_dir("frames"), truth


def run(name: str, variant: str) -> dict:
    frames_dir, truth = frames_of(name)
    overrides = dict(VARIANTS[variant])
    bundle_adjustment = overrides.pop("_bundle_adjustment", colmap.FAST_BUNDLE_ADJUSTMENT)
    out = RUNS / "steps" / f"{name}-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    began = time.perf_counter()
    with patched(colmap, "FAST_BUNDLE_ADJUSTMENT", bundle_adjustment):
        colmap.estimate_poses(frames_dir, PosesSettings(**overrides), out)
    seconds = time.perf_counter() - began
    poses = read_dataset(out)
    numbers = source_numbers(frames_dir)
    errors = pose_errors(poses.cam_to_world, truth[[numbers[n] for n in poses.names]])["rotation_deg"]
    report = json.loads((out / "report.json").read_text())
    return {
        "input": name,
        "variant": variant,
        "seconds": round(seconds, 1),
        "parts": report["seconds"],
        "registered": f"{report['registered']}/{report['total']}",
        "points3D": report["points3D"],
        "rotation_error_deg": [round(float(np.median(errors)), 4), round(float(errors.max()), 4)],
    }


@contextlib.contextmanager
def patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default="photos,video")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    rows = []
    for name in args.inputs.split(","):
        for variant in args.variants.split(","):
            rows.append(run(name, variant))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, `estimate_poses` back to back")
    print(
        "| input | variant | features s | matching s | mapping s | undistortion s | total s | registered | "
        "points | rotation error median / max (deg) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        p = r["parts"]
        steps = [
            p.get("features", 0),
            p.get("matching", 0) + p.get("matching_exhaustive", 0),
            p.get("mapping", 0) + p.get("mapping_retry", 0),
            p.get("undistortion", 0),
        ]
        print(
            f"| {r['input']} | {r['variant']} | "
            + " | ".join(f"{s:.1f}" for s in steps)
            + f" | {r['seconds']} | {r['registered']} | {r['points3D']:,} | "
            f"{r['rotation_error_deg'][0]} / {r['rotation_error_deg'][1]} |"
        )


if __name__ == "__main__":
    main()
