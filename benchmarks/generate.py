"""Time per denoising step and peak memory of windowed sampling: plain windows, each stabilizer
alone, and all together, on the tiny random-weight models (or any model: --model).

    .venv/bin/python benchmarks/generate.py [--model tiny-svd|tiny-cogvideox|PATH] [--frames 24]

Each case runs in a fresh process so its peak memory is its own (CUDA: max allocated; CPU: peak
resident set above the process's size after loading the model). On the CPU, time is the process's
CPU time on one thread, so other work on the machine does not skew it. Target: all stabilizers together
cost at most 25% more time per step than plain windows.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]
CASES = {
    "plain": {"shared_noise": False},
    "shared noise": {"shared_noise": True},
    "freenoise": {"shared_noise": True, "freenoise": True},
    "anchors": {"shared_noise": False, "anchor_frames": "0"},
    "kv cache": {"shared_noise": False, "kv_cache_until": 2},
    "all": {"shared_noise": True, "freenoise": True, "anchor_frames": "0", "kv_cache_until": 2},
}


def run_case(name: str, model_spec: str, frames: int, steps: int, size: int, device: str) -> dict:
    from vid3d.config import GenerateSettings
    from vid3d.generate.adapters import Request, load_model
    from vid3d.generate.stage import generate

    # One thread and CPU time: the figures hold on a busy machine (CUDA: wall time, synchronised).
    torch.set_num_threads(1)
    device = torch.device(device)
    model = load_model(model_spec, device, torch.float16 if device.type == "cuda" else torch.float32)
    image = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    request = Request(image, prompt="an orbit", num_frames=frames, height=size, width=size)
    settings = GenerateSettings(steps=steps, window=0, stride=0, **CASES[name])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def tick(done, total):
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock())

    generate(model, request, settings, on_step=tick)
    per_step = float(np.median(np.diff(times)))  # steps after the first: no warm-up
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"case": name, "per_step_s": per_step, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-svd")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the fastest counts")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.model, args.frames, args.steps, args.size, args.device)))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for name in CASES:
        runs = []
        for _ in range(args.repeats):
            command = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--model",
                args.model,
                "--frames",
                str(args.frames),
                "--steps",
                str(args.steps),
                "--size",
                str(args.size),
                "--device",
                args.device,
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append(min(runs, key=lambda r: r["per_step_s"]))
    plain = rows[0]["per_step_s"]
    table = Table(title=f"windowed sampling, {args.model}, {args.frames} frames at {args.size}px, {args.device}")
    for column in ("case", "s / step", "vs plain", "peak MB"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for row in rows:
        table.add_row(
            row["case"], f"{row['per_step_s']:.3f}", f"{row['per_step_s'] / plain - 1:+.1%}", f"{row['peak_mb']:.0f}"
        )
    Console().print(table)


if __name__ == "__main__":
    main()
