"""What each stabilizer does to the embedded orbit model's videos, on held-out procedural scenes.

    .venv/bin/python benchmarks/stabilizers.py [--scenes 10] [--steps 20] [--cases "plain windows,gradient 0.5"]

For each held-out scene (seeds >= 1_000_000, never trained on) the model generates a 48-frame
orbit (longer than its window) from the scene's reference frame with NON-circular windows, under:
plain windows (independent noise per window, no anchors, no cache), each stabilizer alone, all
together, and the feedback settings; same seeds for every case. Measured against the true renders
of the same cameras:

- error: mean absolute error of [0, 1] RGB over frames at least 45 degrees from the reference,
  also after a Gaussian blur of both (sigma 1.5 px), so a blurry guess is not rewarded;
- seam: error of the frame-to-frame change at the frames where windows start and end
  (|generated difference - true difference|, mean absolute);
- loop closure: last frame against the first, relative to the median adjacent-frame difference
  (about 1 when the orbit closes; vid3d.metrics.video);
- epipolar error: median symmetric epipolar distance (pixels) of flow correspondences between
  frames 1 and 2 apart, with the known cameras (vid3d.metrics.epipolar; fits nothing, so the
  feedback loop cannot grade itself);
- motion: the objects' horizontal motion as a share of the true motion (vid3d.metrics.video.object_motion);
- seconds: generation of the 48 frames, feedback loop included;
- the 3D the orbit yields (vid3d.metrics.scene3d; --no-3d skips them): the splats and export stages
  run on the frames with the model's cameras, with the demo's generated-part settings
  (configs/demo-generate.toml: 300 steps, every 8th frame held out); the held-out PSNR, the mesh's
  Chamfer distance (% of the true scene's diagonal) and F-score at 1% against the true surface
  (around the objects, ground included, and on the objects alone), and
  the Gaussians' PSNR and SSIM at 16 cameras off the orbit (10 degrees higher, and 25% closer)
  against the true renders there. The same on the true renders of the orbit's cameras is the
  ceiling ("true renders (ceiling)"). The 64-pixel frames are too small for COLMAP's
  reconstructability (vid3d.metrics.scene3d.MIN_SIFT_SIDE).

Prints mean and spread (standard deviation over scenes), then each case paired against plain
windows (mean and spread of the difference, and in how many scenes it is higher), and writes
runs/stabilizers.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from model_gate import (
    MIN_DEGREES,
    mae,
)  # the gate's error, blur included (benchmarks/ is on sys.path when a script there runs)

from vid3d.cameras import Camera, stacked
from vid3d.config import GenerateSettings, SplatsSettings
from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.model import RIG
from vid3d.generate.model.data import FRAMES, held_out_seeds, orbit, render_orbit_start
from vid3d.generate.sampler import Plan, frame_sets
from vid3d.generate.stage import feedback_loop, generate
from vid3d.metrics.epipolar import epipolar_error
from vid3d.metrics.scene3d import TrueOrbit, orbit_measures
from vid3d.metrics.video import loop_closure, object_motion

PLAIN = {"shared_noise": False, "freenoise": False, "anchor_every": 0, "anchor_frames": "", "kv_cache_until": 0}


def cases(steps: int) -> dict[str, dict]:
    together = {**PLAIN, "shared_noise": True, "anchor_frames": "0", "kv_cache_until": max(1, steps // 4)}
    return {
        "plain windows": PLAIN,
        "shared noise": {**PLAIN, "shared_noise": True},
        "anchor attention": {**PLAIN, "anchor_frames": "0"},
        "K/V cache": {**PLAIN, "kv_cache_until": max(1, steps // 4)},
        "all together": together,
        **{
            f"{mode} {weight}": {**PLAIN, "feedback": mode, "feedback_weight": weight}
            for mode, weights in FEEDBACK_WEIGHTS.items()
            for weight in weights
        },
        "rectify 0.5 refit each step": {
            **PLAIN,
            "feedback": "rectify",
            "feedback_weight": 0.5,
            "feedback_warm_start": False,
        },
        "rectify_noise 0.5 refit each step": {
            **PLAIN,
            "feedback": "rectify_noise",
            "feedback_weight": 0.5,
            "feedback_warm_start": False,
        },
        "all together + rectify 0.5": {**together, "feedback": "rectify", "feedback_weight": 0.5},
    }


FEEDBACK_WEIGHTS = {
    "rectify": (0.3, 0.5),
    "gradient": (0.5,),
    "rectify_noise": (0.5,),
    "gradient_guided": (0.5,),
}  # the other feedback settings: their defaults


def seam_error(generated: np.ndarray, truth: np.ndarray, joins: list[int]) -> float:
    """Error of the change from frame j - 1 to frame j at each join j."""
    g, t = generated.astype(np.float32) / 255, truth.astype(np.float32) / 255
    return float(np.mean([np.abs((g[j] - g[j - 1]) - (t[j] - t[j - 1])).mean() for j in joins]))


def window_joins(model: OrbitVideoModel, settings: GenerateSettings) -> list[int]:
    sets = frame_sets(FRAMES, model.window, Plan.of(settings))
    edges = {int(s[0]) for s in sets} | {int(s[-1]) + 1 for s in sets}
    return sorted(j for j in edges if 0 < j < FRAMES)


def consistency_psnr(frames: np.ndarray, cameras: list[Camera], splat_steps: int, start: Path | None = None) -> float:
    """Held-out PSNR of Gaussians fitted to the generated frames with the known cameras (starting
    from a ball of points, or from the Gaussians in `start`)."""
    from vid3d.cameras import write_cameras
    from vid3d.ingest import write_frames
    from vid3d.poses.given import poses_from_cameras
    from vid3d.splats.train import train_splats

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        frames_dir, poses_dir, splats_dir = scratch / "frames", scratch / "poses", scratch / "splats"
        for folder in (frames_dir, poses_dir, splats_dir):
            folder.mkdir()
        write_frames(frames_dir, frames, source="generated")
        write_cameras(scratch / "cameras.json", cameras)
        poses_from_cameras(frames_dir, scratch / "cameras.json", poses_dir, points=5000)
        settings = SplatsSettings(
            steps=splat_steps,
            sh_degree=1,
            sh_degree_interval=100,
            refine_start=50,
            refine_stop=splat_steps - 50,
            refine_every=50,
            reset_every=10 * splat_steps,
            checkpoint_every=10 * splat_steps,
            test_every=8,
        )
        result = train_splats(poses_dir, settings, splats_dir, scratch / "resume", "cpu", start=start)
        return float(result.metrics["psnr"])


KEYS = ("error", "error_blur", "seam", "loop_closure", "epipolar_px", "motion", "seconds")
MEASURES_3D = (
    "held_out_psnr",
    "chamfer_pct",
    "fscore_1pct",
    "objects_chamfer_pct",
    "objects_fscore_1pct",
    "off_orbit_psnr",
    "off_orbit_ssim",
)
CEILING = "true renders (ceiling)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/stabilizers.json"))
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N scenes (to continue a stopped run)")
    parser.add_argument("--no-3d", action="store_true", help="skip the 3D measures (reconstruct and export)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = OrbitVideoModel.load(args.weights)
    degrees = np.arange(FRAMES) * 360.0 / FRAMES
    far = np.minimum(degrees, 360 - degrees) >= MIN_DEGREES
    base = GenerateSettings(frames=FRAMES, steps=args.steps, loop=False)
    joins = window_joins(model, base)
    request_cameras = model.cameras(Request(image=np.zeros((64, 64, 3), np.uint8), num_frames=FRAMES))

    chosen = {
        name: overrides
        for name, overrides in cases(args.steps).items()
        if not args.cases or name in args.cases.split(",")
    }
    cam_to_world, Ks = stacked(request_cameras)
    keys = KEYS + (() if args.no_3d else MEASURES_3D)
    rows = {name: {key: [] for key in keys} for name in ([] if args.no_3d else [CEILING]) + list(chosen)}
    for seed in held_out_seeds(args.scenes)[args.skip :]:
        truth, objects = render_orbit_start(seed, FRAMES)
        true_orbit = TrueOrbit(seed, orbit(seed), RIG)
        if not args.no_3d:
            measure_3d(rows[CEILING], truth, request_cameras, true_orbit)
            print(f"scene {seed} {CEILING}: {line_3d(rows[CEILING])}", flush=True)
        for name, overrides in chosen.items():
            settings = replace(base, seed=seed, **overrides)
            request = Request(image=truth[0], num_frames=FRAMES)
            began = time.time()
            loop = feedback_loop(model, request, settings, torch.device("cpu"))
            generated = generate(model, request, settings, feedback=loop)
            row = rows[name]
            row["seconds"].append(time.time() - began)
            row["error"].append(mae(generated[far], truth[far]))
            row["error_blur"].append(mae(generated[far], truth[far], blur=True))
            row["seam"].append(seam_error(generated, truth, joins))
            row["loop_closure"].append(loop_closure(list(generated)))
            row["epipolar_px"].append(epipolar_error(generated, cam_to_world, Ks)["epipolar_px"])
            row["motion"].append(object_motion(generated, truth, objects)[1])
            if not args.no_3d:
                measure_3d(row, generated, request_cameras, true_orbit)
            print(
                f"scene {seed} {name:<17} error {row['error'][-1]:.4f} blur {row['error_blur'][-1]:.4f} "
                f"seam {row['seam'][-1]:.4f} loop {row['loop_closure'][-1]:.2f} "
                f"epipolar {row['epipolar_px'][-1]:.3f} px motion {row['motion'][-1]:.0%} "
                f"{row['seconds'][-1]:.1f} s {'' if args.no_3d else line_3d(row)}",
                flush=True,
            )
    print_tables(rows, args, model.window)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        name: {k: (float(np.mean(v)), float(np.std(v))) for k, v in row.items() if v} for name, row in rows.items()
    }
    args.out.write_text(
        json.dumps(
            {
                "scenes": list(held_out_seeds(args.scenes))[args.skip :],
                "steps": args.steps,
                "window": model.window,
                "joins": joins,
                "cases": cases(args.steps),
                "summary": summary,
                "per_scene": rows,
            },
            indent=1,
        )
    )


def measure_3d(row: dict, frames: np.ndarray, cameras: list[Camera], truth: TrueOrbit) -> None:
    """The 3D the frames yield (vid3d.metrics.scene3d: reconstruct and export with the demo's
    generated-part settings), appended to the case's row."""
    measures = orbit_measures(frames, cameras, truth)
    for key in MEASURES_3D:
        row[key].append(measures[key])


def line_3d(row: dict) -> str:
    return (
        f"held-out {row['held_out_psnr'][-1]:.2f} dB chamfer {row['chamfer_pct'][-1]:.3f}% "
        f"F {row['fscore_1pct'][-1]:.3f} objects {row['objects_chamfer_pct'][-1]:.3f}% "
        f"F {row['objects_fscore_1pct'][-1]:.3f} off-orbit {row['off_orbit_psnr'][-1]:.2f} dB "
        f"SSIM {row['off_orbit_ssim'][-1]:.3f}"
    )


def print_tables(rows: dict, args, window: int) -> None:
    """Mean ± spread over scenes per case, then each case paired against plain windows."""
    print(
        f"\n{args.scenes - args.skip} held-out scenes, 48-frame orbits, window {window}, non-circular, "
        f"{args.steps} steps; mean ± standard deviation over scenes"
    )
    names = {
        "error": 4, "error_blur": 4, "seam": 4, "loop_closure": 2, "epipolar_px": 3, "motion": 2,
        "held_out_psnr": 2, "chamfer_pct": 3, "fscore_1pct": 3, "objects_chamfer_pct": 3,
        "objects_fscore_1pct": 3, "off_orbit_psnr": 2, "off_orbit_ssim": 3,
    }  # fmt: skip
    columns = [k for k in names if any(row.get(k) for row in rows.values())]
    print("| case | " + " | ".join(columns) + " | seconds |")
    for name, row in rows.items():
        cells = [f"{np.mean(row[k]):.{names[k]}f}±{np.std(row[k]):.{names[k]}f}" if row[k] else "" for k in columns]
        seconds = f"{np.mean(row['seconds']):.1f}" if row["seconds"] else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds} |")
    plain = rows.get("plain windows")
    if not plain or not plain["error"]:
        return
    print("\npaired against plain windows: mean ± standard deviation of the difference, scenes where higher")
    print("| case | " + " | ".join(columns) + " |")
    for name, row in rows.items():
        if name == "plain windows":
            continue
        cells = []
        for k in columns:
            if not row[k] or len(row[k]) != len(plain[k]):
                cells.append("")
                continue
            diff = np.asarray(row[k]) - np.asarray(plain[k])
            cells.append(f"{diff.mean():+.{names[k]}f}±{diff.std():.{names[k]}f} ({int((diff > 0).sum())}/{len(diff)})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
