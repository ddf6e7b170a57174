"""Train the shipped orbit model (autoencoder, then diffusion transformer) on procedural orbits.

    python scripts/train_model.py --run runs/orbit            # resumes if runs/orbit has checkpoints
    python scripts/train_model.py --run runs/orbit --install  # then copy the weights into the package
    python scripts/train_model.py --run runs/orbit --device cuda  # on a GPU (same batches as on the CPU)

Settings are the defaults of vid3d.generate.model.train.Settings unless overridden (--steps 100 etc.).
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import fields
from pathlib import Path

# Sleeping (not spinning) OpenMP threads: on a shared 2-core machine spinning made steps 10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from vid3d.generate.model import WEIGHTS
from vid3d.generate.model.train import Settings, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/orbit"))
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop the diffusion stage after this long (the stop is recorded in settings.json)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--install", action="store_true", help="copy the exported weights into vid3d/generate/model/weights"
    )
    for field in fields(Settings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU here; use --device cpu")
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    if args.device == "cpu":
        torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # zero-initialised gates make denormals, 20x slower on this CPU
    out = run(settings, args.run, args.data, args.max_minutes, args.device)
    print(f"weights in {out}")
    if args.install:
        shutil.copytree(out, WEIGHTS, dirs_exist_ok=True)
        print(f"installed to {WEIGHTS}")


if __name__ == "__main__":
    main()
