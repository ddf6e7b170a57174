"""Does reconstruction gain from starting at the feedback loop's Gaussians (splats.init = generate)?

    .venv/bin/python benchmarks/feedback_start.py [--scenes 3] [--steps 50,100,300]

For held-out procedural scenes the embedded model generates a 48-frame orbit with the feedback
loop (gradient 0.5, the setting with the lowest epipolar error in docs/stabilizers.md); then
Gaussians are fitted to the generated frames at the model's cameras (the stabilizer benchmark's
3D-consistency fit: torch backend, every 8th frame held out) for each step count, starting from
the usual ball of points and from the loop's final Gaussians. Prints held-out PSNR and seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from stabilizers import PLAIN, consistency_psnr  # benchmarks/ is on sys.path when a script there runs

from vid3d.config import GenerateSettings
from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.model.data import FRAMES, held_out_seeds, render_orbit_start
from vid3d.generate.stage import feedback_loop, generate
from vid3d.splats.model import save_ply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--steps", default="50,100,300", help="Gaussian training steps to compare at")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = OrbitVideoModel.load(None)
    settings = replace(GenerateSettings(frames=FRAMES, loop=False), **PLAIN, feedback="gradient", feedback_weight=0.5)
    cameras = model.cameras(Request(image=np.zeros((64, 64, 3), np.uint8), num_frames=FRAMES))
    steps = [int(s) for s in args.steps.split(",")]
    rows = {(start, n): {"psnr": [], "seconds": []} for start in ("points", "generate") for n in steps}
    for seed in held_out_seeds(args.scenes):
        truth, _ = render_orbit_start(seed, FRAMES)
        request = Request(image=truth[0], num_frames=FRAMES)
        loop = feedback_loop(model, request, replace(settings, seed=seed), torch.device("cpu"))
        frames = generate(model, request, replace(settings, seed=seed), feedback=loop)
        with tempfile.TemporaryDirectory() as scratch:
            loop_splats = Path(scratch) / "splats.ply"
            save_ply(loop.trainer.splats, loop_splats)
            for (start, n), row in rows.items():
                began = time.time()
                row["psnr"].append(consistency_psnr(frames, cameras, n, loop_splats if start == "generate" else None))
                row["seconds"].append(time.time() - began)
                print(
                    f"scene {seed} start {start:<8} {n:>4} steps: {row['psnr'][-1]:.2f} dB {row['seconds'][-1]:.1f} s",
                    flush=True,
                )

    print(f"\n{args.scenes} held-out scenes, 48-frame orbits generated with feedback gradient 0.5; mean ± std")
    print(f"{'start':<10}{'steps':>6}{'held-out PSNR (dB)':>22}{'seconds':>10}")
    for (start, n), row in rows.items():
        print(
            f"{start:<10}{n:>6}{np.mean(row['psnr']):>16.2f}±{np.std(row['psnr']):.2f}{np.mean(row['seconds']):>10.1f}"
        )


if __name__ == "__main__":
    main()
