"""Quality gate of the embedded orbit model on held-out procedural scenes.

    .venv/bin/python benchmarks/model_gate.py [--weights FOLDER] [--scenes 10] [--out runs/model_gate.json]

For each held-out scene (seeds >= 1_000_000, never trained on) the model generates the 48-frame orbit
from the scene's reference frame with the project's sampler; each generated frame is compared with
the true render of its camera. Error: mean absolute error of [0, 1] RGB at 64x64, over the frames at
least 45 degrees from the reference, also after a Gaussian blur of both images (sigma 1.5 px) so a
blurry guess is not what passes. Baselines: copying the reference, the reference reprojected over the
ground plane (the model's own geometric input), and the autoencoder's reconstruction of the truth
(the floor). Gate: the model's error is at least 30% below copying the reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.model.data import FRAMES, RIG, held_out_seeds, render_orbit
from vid3d.generate.model.warp import warp_grid, warp_reference
from vid3d.generate.sampler import Plan, Stabilizers, sample

MIN_DEGREES = 45.0
BLUR_SIGMA = 1.5
REQUIRED_REDUCTION = 0.30


def generate(
    model: OrbitVideoModel,
    reference: np.ndarray,
    steps: int,
    seed: int,
    anchors: tuple[int, ...],
    loop: bool,
    guidance: float = 0.0,
) -> np.ndarray:
    request = Request(image=reference, num_frames=FRAMES, guidance=guidance)
    generator = torch.Generator().manual_seed(seed)
    condition = model.prepare(request, generator)
    latents = sample(model, condition, request, Plan(steps=steps, loop=loop), Stabilizers(anchors=anchors), generator)
    return model.decode(latents, condition)


def pixel_warp(reference: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(reference).float().permute(2, 0, 1)[None] / 255
    grid = warp_grid(
        torch.from_numpy(np.radians(degrees))[None],
        reference.shape[0],
        RIG["radius"],
        RIG["elevation_deg"],
        RIG["fov_deg"],
        RIG["look_at"],
    )
    return (warp_reference(x, grid)[0].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def reconstruct(model: OrbitVideoModel, frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 127.5 - 1
    y = model.autoencoder.decode(model.autoencoder.encode(x))
    return ((y.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mae(a: np.ndarray, b: np.ndarray, blur: bool = False) -> float:
    a, b = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    if blur:
        a = np.stack([cv2.GaussianBlur(x, (0, 0), BLUR_SIGMA) for x in a])
        b = np.stack([cv2.GaussianBlur(x, (0, 0), BLUR_SIGMA) for x in b])
    return float(np.abs(a - b).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--anchors", default="0", help="anchor frames, comma-separated ('' for none)")
    parser.add_argument("--no-loop", action="store_true", help="open windows instead of circular ones")
    parser.add_argument(
        "--guidance", type=float, default=0.0, help="autoguidance scale (0: the model's default, 1: off)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/model_gate.json"))
    args = parser.parse_args()
    anchors = tuple(int(a) for a in args.anchors.split(",") if a.strip())
    torch.set_num_threads(2)
    model = OrbitVideoModel.load(args.weights)

    degrees = np.arange(FRAMES) * 360.0 / FRAMES
    far = np.minimum(degrees, 360 - degrees) >= MIN_DEGREES
    methods = ["model", "copy reference", "ground warp", "autoencoder floor"]
    errors = {m: {"mae": [], "mae_blur": []} for m in methods}
    seconds = []
    for seed in held_out_seeds(args.scenes):
        truth = render_orbit(seed)
        began = time.time()
        generated = generate(model, truth[0], args.steps, seed, anchors, not args.no_loop, args.guidance)
        seconds.append(time.time() - began)
        guesses = {
            "model": generated,
            "copy reference": np.repeat(truth[:1], FRAMES, 0),
            "ground warp": pixel_warp(truth[0], degrees),
            "autoencoder floor": reconstruct(model, truth),
        }
        for name, frames in guesses.items():
            errors[name]["mae"].append(mae(frames[far], truth[far]))
            errors[name]["mae_blur"].append(mae(frames[far], truth[far], blur=True))
        print(
            f"scene {seed}: model {errors['model']['mae'][-1]:.4f} copy {errors['copy reference']['mae'][-1]:.4f} "
            f"({seconds[-1]:.1f}s)",
            flush=True,
        )

    summary = {m: {k: float(np.mean(v)) for k, v in e.items()} for m, e in errors.items()}
    copy = summary["copy reference"]
    for row in summary.values():
        row["vs_copy"] = 1 - row["mae"] / copy["mae"]
        row["vs_copy_blur"] = 1 - row["mae_blur"] / copy["mae_blur"]
    passed = summary["model"]["vs_copy"] >= REQUIRED_REDUCTION

    print(f"\n{args.scenes} held-out scenes, {int(far.sum())} frames each >= {MIN_DEGREES:.0f} deg from the reference")
    print(f"{'method':<20}{'MAE':>8}{'vs copy':>10}{'MAE blur':>10}{'vs copy':>10}")
    for name, row in summary.items():
        print(
            f"{name:<20}{row['mae']:>8.4f}{row['vs_copy']:>+10.1%}{row['mae_blur']:>10.4f}{row['vs_copy_blur']:>+10.1%}"
        )
    print(
        f"gate (model >= {REQUIRED_REDUCTION:.0%} below copy): {'PASS' if passed else 'FAIL'}; "
        f"48 frames in {np.mean(seconds):.1f}s mean ({args.steps} steps, anchors {anchors}, "
        f"loop {not args.no_loop}, guidance {args.guidance or 'default'})"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "scenes": list(held_out_seeds(args.scenes)),
                "min_degrees": MIN_DEGREES,
                "blur_sigma_px": BLUR_SIGMA,
                "steps": args.steps,
                "anchors": list(anchors),
                "loop": not args.no_loop,
                "guidance": args.guidance,
                "summary": summary,
                "per_scene": errors,
                "passed": passed,
                "seconds_per_48_frames": seconds,
                "required_reduction": REQUIRED_REDUCTION,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
