"""Gaussian training alone and beside other CPU-bound processes, under OpenMP waiting policies.

torch's CPU kernels run on libgomp threads. Between parallel regions an idle thread spins before it
sleeps: for libgomp's default 300,000 spins when nothing is set, forever with OMP_WAIT_POLICY=ACTIVE,
never with PASSIVE. Spinning pays when the cores are free and collapses when another process holds
one (the thread a region waits for is not running). This prints, for each policy, the time of the
same training alone and with `--hogs` busy-looping processes on the machine, and the ratio.

    .venv/bin/python benchmarks/shared_cores.py [--steps 60] [--hogs 2] [--rounds 2] [--policies 300k,1k]

`--hogs 0` measures alone only.

Each run is `vid3d reconstruct --force` of the splats stage only (frames and poses are prepared
once, in runs/shared-cores/), so it is the real command with its real thread setup; the time is
the training's own (splats/metrics.json train_seconds), the median of the rounds, which take the
policies in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "runs" / "shared-cores"
EXAMPLE = ROOT / "examples" / "orbit.mp4"
# name -> environment: what each policy adds to a clean environment
POLICIES = {
    "300k": ("libgomp's default (300k spins)", {"GOMP_SPINCOUNT": "300000"}),
    "passive": ("OMP_WAIT_POLICY=PASSIVE (no spinning)", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "30k": ("GOMP_SPINCOUNT=30000", {"GOMP_SPINCOUNT": "30000"}),
    "3k": ("GOMP_SPINCOUNT=3000", {"GOMP_SPINCOUNT": "3000"}),
    "1k": ("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
    "vid3d": ("vid3d's default (nothing set)", {}),
}
OMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def vid3d(*args: str, env: dict[str, str], timeout: float | None = None) -> bool:
    """Run one vid3d command; False when it ran past `timeout` and was stopped."""
    clean = {k: v for k, v in os.environ.items() if k not in OMP_VARIABLES}
    try:
        subprocess.run(
            [sys.executable, "-m", "vid3d.cli", *args],
            env={**clean, **env},
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return True


def prepare() -> None:
    if not (PROJECT / "poses" / "transforms.json").is_file():
        vid3d(
            "reconstruct",
            str(PROJECT),
            "--input",
            str(EXAMPLE),
            "--preset",
            "fast",
            "--set",
            "splats.steps=1",
            env={"OMP_WAIT_POLICY": "PASSIVE"},
        )


def train(steps: int, env: dict[str, str], timeout: float | None = None) -> float:
    """The training's seconds (inf when stopped at `timeout`)."""
    if not vid3d(
        "reconstruct",
        str(PROJECT),
        "--force",
        "--preset",
        "fast",
        "--set",
        f"splats.steps={steps}",
        env=env,
        timeout=timeout,
    ):
        return float("inf")
    return json.loads((PROJECT / "splats" / "metrics.json").read_text())["train_seconds"]


def median_of_rounds(policies: list[str], rounds: int, steps: int, timeout: float | None = None) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(rounds):
        for name in policies:
            times[name].append(train(steps, POLICIES[name][1], timeout))
    return {name: statistics.median(values) for name, values in times.items()}


def hogs(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"some of {', '.join(POLICIES)}")
    args = parser.parse_args()
    policies = args.policies.split(",")
    prepare()
    alone = median_of_rounds(policies, args.rounds, args.steps)
    shared = dict.fromkeys(policies, float("nan"))
    if args.hogs:
        busy = hogs(args.hogs)
        try:
            shared = median_of_rounds(policies, args.rounds, args.steps, timeout=60 + 8 * max(alone.values()))
        finally:
            for process in busy:
                process.kill()
    best = min(alone.values())
    print(
        f"{args.steps} Gaussian steps of the example (fast preset), {os.cpu_count()} CPUs, "
        f"{args.hogs} busy processes beside, median of {args.rounds} rounds; {time.strftime('%Y-%m-%d')}"
    )
    print(f"| policy | alone s | vs best alone | beside {args.hogs} busy s | beside / alone |")
    print("| --- | --- | --- | --- | --- |")
    for name in policies:
        print(
            f"| {POLICIES[name][0]} | {alone[name]:.1f} | {alone[name] / best:.2f} | {shared[name]:.1f} | "
            f"{shared[name] / alone[name]:.2f} |"
        )


if __name__ == "__main__":
    main()
