"""What each stabilizer does to the embedded orbit model's videos, on held-out procedural scenes.

    .venv/bin/python benchmarks/stabilizers.py [--scenes 10] [--steps 20] [--splat-steps 300]

For each held-out scene (seeds >= 1_000_000, never trained on) the model generates a 48-frame
orbit (longer than its window) from the scene's reference frame with NON-circular windows, under:
plain windows (independent noise per window, no anchors, no cache), each stabilizer alone, and all
together; same seeds for every case. Measured against the true renders of the same cameras:

- error: mean absolute error of [0, 1] RGB over frames at least 45 degrees from the reference,
  also after a Gaussian blur of both (sigma 1.5 px), so a blurry guess is not rewarded;
- seam: error of the frame-to-frame change at the frames where windows start and end
  (|generated difference - true difference|, mean absolute);
- loop closure: last frame against the first, relative to the median adjacent-frame difference
  (about 1 when the orbit closes; vid3d.metrics.video);
- 3D consistency: held-out PSNR of Gaussians fitted (torch backend) to every frame but every 8th,
  with the model's known cameras, evaluated on every 8th generated frame;
- epipolar error: median symmetric epipolar distance (pixels) of flow correspondences between
  frames 1 and 2 apart, with the known cameras (vid3d.metrics.epipolar; fits nothing, so the
  feedback loop cannot grade itself);
- motion: the objects' horizontal motion as a share of the true motion (vid3d.metrics.video.object_motion);
- seconds: generation of the 48 frames, feedback loop included.

    --cases "plain windows,rectify 0.5"   runs only the listed cases

Prints mean and spread (standard deviation over scenes) and writes runs/stabilizers.json.
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
from vid3d.generate.model.data import FRAMES, held_out_seeds, render_orbit_start
from vid3d.generate.sampler import Plan, frame_sets
from vid3d.generate.stage import feedback_loop, generate
from vid3d.metrics.epipolar import epipolar_error
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
        "all together + rectify 0.5": {**together, "feedback": "rectify", "feedback_weight": 0.5},
    }


FEEDBACK_WEIGHTS = {"rectify": (0.3, 0.5), "gradient": (0.5,)}  # the other feedback settings: their defaults


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--splat-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/stabilizers.json"))
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N scenes (to continue a stopped run)")
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
    rows = {
        name: {
            key: []
            for key in ("error", "error_blur", "seam", "loop_closure", "psnr_3d", "epipolar_px", "motion", "seconds")
        }
        for name in chosen
    }
    for seed in held_out_seeds(args.scenes)[args.skip :]:
        truth, objects = render_orbit_start(seed, FRAMES)
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
            row["psnr_3d"].append(consistency_psnr(generated, request_cameras, args.splat_steps))
            row["epipolar_px"].append(epipolar_error(generated, cam_to_world, Ks)["epipolar_px"])
            row["motion"].append(object_motion(generated, truth, objects)[1])
            print(
                f"scene {seed} {name:<17} error {row['error'][-1]:.4f} blur {row['error_blur'][-1]:.4f} "
                f"seam {row['seam'][-1]:.4f} "
                f"loop {row['loop_closure'][-1]:.2f} 3D {row['psnr_3d'][-1]:.2f} dB "
                f"epipolar {row['epipolar_px'][-1]:.3f} px motion {row['motion'][-1]:.0%} "
                f"{row['seconds'][-1]:.1f} s",
                flush=True,
            )

    plain = {k: float(np.mean(v)) for k, v in next(iter(rows.values())).items()}  # the first case: plain windows
    print(
        f"\n{args.scenes} held-out scenes, 48-frame orbits, window {model.window}, non-circular, {args.steps} steps; "
        "mean ± standard deviation over scenes"
    )
    header = (
        f"{'case':<28}{'error':>16}{'vs plain':>10}{'error (blur)':>16}{'seam':>16}{'loop closure':>14}"
        f"{'3D PSNR':>16}{'epipolar px':>14}{'motion':>12}{'seconds':>10}"
    )
    print(header)
    summary = {}
    for name, row in rows.items():
        stats = {k: (float(np.mean(v)), float(np.std(v))) for k, v in row.items()}
        summary[name] = stats

        def cell(k, digits=4, stats=stats):
            return f"{stats[k][0]:.{digits}f}±{stats[k][1]:.{digits}f}"

        print(
            f"{name:<28}{cell('error'):>16}{1 - stats['error'][0] / plain['error']:>+10.1%}"
            f"{cell('error_blur'):>16}{cell('seam'):>16}{cell('loop_closure', 2):>14}{cell('psnr_3d', 2):>16}"
            f"{cell('epipolar_px', 3):>14}{cell('motion', 2):>12}{stats['seconds'][0]:>10.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "scenes": list(held_out_seeds(args.scenes)),
                "steps": args.steps,
                "splat_steps": args.splat_steps,
                "window": model.window,
                "joins": joins,
                "cases": cases(args.steps),
                "summary": summary,
                "per_scene": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
