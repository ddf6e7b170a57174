"""Coarse to fine: the demo's Gaussian training of the bundled example with its first steps on
half-size frames (`splats.coarse_steps`), against full size throughout, in one run.

    .venv/bin/python benchmarks/coarse_to_fine.py [--coarse 0,300,500] [--set splats.steps=1000 ...]

The example's poses are made once (runs/coarse-to-fine/, `vid3d poses`); each case trains in this
process from the same points and seed, with the demo's settings (configs/demo.toml) on the
fast preset, and prints training seconds, held-out PSNR and Gaussians.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from vid3d.config import load_settings, read_config, read_preset
from vid3d.demo import EXAMPLE_VIDEO, VIDEO_CONFIG
from vid3d.splats.data import load_dataset, load_points
from vid3d.splats.train import Trainer

PROJECT = Path(__file__).resolve().parents[1] / "runs" / "coarse-to-fine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coarse", default="0,300,500", help="coarse_steps values to compare")
    parser.add_argument("--set", action="append", default=[], help="more settings, as for vid3d --set")
    args = parser.parse_args()
    poses = PROJECT / "poses"
    if not (poses / "transforms.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "vid3d.cli", "poses", str(PROJECT), "--input", str(EXAMPLE_VIDEO)], check=True
        )
    settings = load_settings(read_preset("fast"), read_config(VIDEO_CONFIG), overrides=args.set).splats
    data = load_dataset(poses, settings.test_every, "cpu", settings.max_side)
    rows = []
    for coarse in map(int, args.coarse.split(",")):
        trainer = Trainer(
            data, replace(settings, coarse_steps=coarse), "torch", torch.device("cpu"), load_points(poses)
        )
        start = time.perf_counter()
        trainer.train(settings.steps)
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as scratch:
            psnr = trainer.evaluate(Path(scratch) / "renders")["psnr"]
        rows.append((coarse, seconds, psnr, len(trainer.splats["means"])))
        print(rows[-1], flush=True)
    print(
        f"\n{settings.steps} steps of the example at {data.width}x{data.height}, the demo's schedule; "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print("| coarse_steps | train s | vs full size | held-out PSNR | Gaussians |")
    print("| --- | --- | --- | --- | --- |")
    full = rows[0][1]
    for coarse, seconds, psnr, gaussians in rows:
        print(f"| {coarse} | {seconds:.0f} | {seconds / full:.2f} | {psnr:.2f} dB | {gaussians:,} |")


if __name__ == "__main__":
    main()
