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
  with the model's known cameras, evaluated on every 8th generated frame.

Prints mean and spread (standard deviation over scenes) and writes runs/stabilizers.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from vid3d.config import GenerateSettings, SplatsSettings
from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.sampler import Plan, frame_sets
from vid3d.generate.stage import generate
from vid3d.metrics.video import loop_closure
from vid3d.generate.model.data import FRAMES, held_out_seeds, render_orbit

from model_gate import MIN_DEGREES, mae  # the gate's error, blur included (benchmarks/ is on sys.path when a script there runs)

PLAIN = dict(shared_noise=False, freenoise=False, anchor_every=0, anchor_frames="", kv_cache_until=0)


def cases(steps: int) -> dict[str, dict]:
    return {
        "plain windows": PLAIN,
        "shared noise": {**PLAIN, "shared_noise": True},
        "anchor attention": {**PLAIN, "anchor_frames": "0"},
        "K/V cache": {**PLAIN, "kv_cache_until": max(1, steps // 4)},
        "all together": {**PLAIN, "shared_noise": True, "anchor_frames": "0", "kv_cache_until": max(1, steps // 4)},
    }


def seam_error(generated: np.ndarray, truth: np.ndarray, joins: list[int]) -> float:
    """Error of the change from frame j - 1 to frame j at each join j."""
    g, t = generated.astype(np.float32) / 255, truth.astype(np.float32) / 255
    return float(np.mean([np.abs((g[j] - g[j - 1]) - (t[j] - t[j - 1])).mean() for j in joins]))


def window_joins(model: OrbitVideoModel, settings: GenerateSettings) -> list[int]:
    sets = frame_sets(FRAMES, model.window, Plan.of(settings))
    edges = {int(s[0]) for s in sets} | {int(s[-1]) + 1 for s in sets}
    return sorted(j for j in edges if 0 < j < FRAMES)


def consistency_psnr(frames: np.ndarray, cameras: list[dict], splat_steps: int) -> float:
    """Held-out PSNR of Gaussians fitted to the generated frames with the known cameras."""
    from vid3d.generate.output import write_cameras
    from vid3d.ingest import FrameEntry, FramesIndex
    from vid3d.poses.given import poses_from_cameras
    from vid3d.splats.train import train_splats

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        frames_dir, poses_dir, splats_dir = scratch / "frames", scratch / "poses", scratch / "splats"
        for folder in (frames_dir, poses_dir, splats_dir):
            folder.mkdir()
        entries = []
        for i, frame in enumerate(frames):
            iio.imwrite(frames_dir / f"{i:05d}.png", frame)
            entries.append(FrameEntry(f"{i:05d}.png", source=f"{i:05d}.png"))
        FramesIndex(source="generated", kind="images", source_frames=len(frames), fps=None, width=frames.shape[2],
                    height=frames.shape[1], frames=entries).write(frames_dir)
        write_cameras(scratch / "cameras.json", cameras)
        poses_from_cameras(frames_dir, scratch / "cameras.json", poses_dir, points=5000)
        settings = SplatsSettings(steps=splat_steps, sh_degree=1, sh_degree_interval=100, refine_start=50,
                                  refine_stop=splat_steps - 50, refine_every=50, reset_every=10 * splat_steps,
                                  checkpoint_every=10 * splat_steps, test_every=8)
        result = train_splats(poses_dir, settings, splats_dir, scratch / "resume", "cpu")
        return float(result.metrics["psnr"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--splat-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/stabilizers.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = OrbitVideoModel.load(args.weights)
    degrees = np.arange(FRAMES) * 360.0 / FRAMES
    far = np.minimum(degrees, 360 - degrees) >= MIN_DEGREES
    base = GenerateSettings(frames=FRAMES, steps=args.steps, loop=False)
    joins = window_joins(model, base)
    request_cameras = model.cameras(Request(image=np.zeros((64, 64, 3), np.uint8), num_frames=FRAMES))

    rows = {name: {"error": [], "error_blur": [], "seam": [], "loop_closure": [], "psnr_3d": [], "seconds": []}
            for name in cases(args.steps)}
    for seed in held_out_seeds(args.scenes):
        truth = render_orbit(seed)
        for name, overrides in cases(args.steps).items():
            settings = replace(base, seed=seed, **overrides)
            began = time.time()
            generated = generate(model, Request(image=truth[0], num_frames=FRAMES), settings)
            row = rows[name]
            row["seconds"].append(time.time() - began)
            row["error"].append(mae(generated[far], truth[far]))
            row["error_blur"].append(mae(generated[far], truth[far], blur=True))
            row["seam"].append(seam_error(generated, truth, joins))
            row["loop_closure"].append(loop_closure(list(generated)))
            row["psnr_3d"].append(consistency_psnr(generated, request_cameras, args.splat_steps))
            print(f"scene {seed} {name:<17} error {row['error'][-1]:.4f} seam {row['seam'][-1]:.4f} "
                  f"loop {row['loop_closure'][-1]:.2f} 3D {row['psnr_3d'][-1]:.2f} dB", flush=True)

    plain = {k: float(np.mean(v)) for k, v in rows["plain windows"].items()}
    print(f"\n{args.scenes} held-out scenes, 48-frame orbits, window {model.window}, non-circular, {args.steps} steps; "
          "mean ± standard deviation over scenes")
    header = f"{'case':<18}{'error':>16}{'vs plain':>10}{'error (blur)':>16}{'seam':>16}{'loop closure':>14}{'3D PSNR':>16}"
    print(header)
    summary = {}
    for name, row in rows.items():
        stats = {k: (float(np.mean(v)), float(np.std(v))) for k, v in row.items()}
        summary[name] = stats
        cell = lambda k, digits=4: f"{stats[k][0]:.{digits}f}±{stats[k][1]:.{digits}f}"
        print(f"{name:<18}{cell('error'):>16}{1 - stats['error'][0] / plain['error']:>+10.1%}"
              f"{cell('error_blur'):>16}{cell('seam'):>16}{cell('loop_closure', 2):>14}{cell('psnr_3d', 2):>16}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scenes": list(held_out_seeds(args.scenes)), "steps": args.steps,
                                    "splat_steps": args.splat_steps, "window": model.window, "joins": joins,
                                    "cases": cases(args.steps), "summary": summary, "per_scene": rows}, indent=1))


if __name__ == "__main__":
    main()
