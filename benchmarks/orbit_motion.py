"""Do the embedded orbit model's objects move the way the camera turns? Under three samplings.

    .venv/bin/python benchmarks/orbit_motion.py [--out runs/orbit_motion.json]

Short orbits (16 frames, 7.5 degrees apart) from held-out references, as in tests/test_model.py:
"12 runs" are the test's scene and 3 more (seeds 1000050-1000053) x sampling seeds 0-2, "16 other
runs" 8 held-out scenes not used to choose anything (seeds 1000054-1000061) x seeds 0-1. For each
adjacent frame pair where the true objects move (more than 0.15 px), the mean horizontal flow over
the objects: "pairs right" is the share with the true sign, "motion" the signed flow as a share of
the true amount; "error" the MAE of frames 1-15 against the true renders. Samplings: autoguidance at
t >= GUIDANCE_FROM_T (the shipped default), at every step, and none. See docs/model.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import GUIDANCE_FROM_T, OrbitVideoModel
from vid3d.generate.model.data import HELD_OUT_SEED, render_orbit_start
from vid3d.generate.sampler import Plan, Stabilizers, sample
from vid3d.metrics.video import object_motion

FRAMES = 16
RUNS = {
    "12 runs": [(HELD_OUT_SEED + 50 + k, s) for k in range(4) for s in range(3)],
    "16 other runs": [(HELD_OUT_SEED + 54 + k, s) for k in range(8) for s in range(2)],
}
SAMPLINGS = {
    f"autoguidance at t >= {GUIDANCE_FROM_T} (default)": GUIDANCE_FROM_T,
    "autoguidance at every step": 0,
    "no autoguidance": float("inf"),
}


def measure(model: OrbitVideoModel, scene: int, seed: int) -> dict[str, float]:
    truth, objects = render_orbit_start(scene, FRAMES)
    request = Request(image=truth[0], num_frames=FRAMES, orbit_degrees=FRAMES * 7.5)
    generator = torch.Generator().manual_seed(seed)
    condition = model.prepare(request, generator)
    latents = sample(model, condition, request, Plan(steps=20), Stabilizers(anchors=(0,)), generator)
    generated = model.decode(latents, condition)
    right, share = object_motion(generated, truth, objects)
    error = np.abs(generated[1:].astype(np.float32) - truth[1:].astype(np.float32)).mean() / 255
    return {"pairs_right": float(right.mean()), "motion": share, "error": float(error)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/orbit_motion.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = OrbitVideoModel.load()

    results = {}
    print(f"{'sampling':<42}{'runs':<15}{'pairs right':>12}{'motion':>8}{'error':>8}")
    for name, from_t in SAMPLINGS.items():
        model.guidance_from_t = from_t
        for runs_name, runs in RUNS.items():
            rows = [measure(model, scene, seed) for scene, seed in runs]
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            results[f"{name} / {runs_name}"] = {"mean": mean, "runs": rows}
            print(
                f"{name:<42}{runs_name:<15}{mean['pairs_right']:>12.1%}{mean['motion']:>8.0%}{mean['error']:>8.4f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
