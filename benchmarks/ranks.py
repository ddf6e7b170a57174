"""Window-parallel generation: seconds per denoising step with 1, 2 and 3 ranks (torchrun, gloo on the CPU).

    .venv/bin/python benchmarks/ranks.py [--models embedded,tiny-wan] [--ranks 1,2,3] [--steps 10]

Each run is `vid3d generate` on a fresh project with stride 1 (many windows per step), one thread per
rank (as torchrun gives each), and its `sample` time (the manifest's timings, model loading left
out) divided by the steps. On a machine with fewer cores than ranks the ranks share cores: the
table then shows the overhead of spreading (the broadcast of each step's input, the all-gather of
the windows' outputs, the anchor pass on every rank), not the speed-up a node of GPUs gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = Path("runs/ranks")
REFERENCE = Path(__file__).parents[1] / "examples" / "reference.png"
MODELS = {
    "embedded": ["--frames", "48"],
    "tiny-wan": ["--model", "tiny-wan", "--frames", "41", "--set", "generate.height=32", "--set", "generate.width=32"],
}


def run(model: str, ranks: int, steps: int, threads: int = 1) -> dict:
    project = RUNS / f"{model}-{ranks}-{threads}"
    shutil.rmtree(project, ignore_errors=True)
    launcher = [sys.executable, "-m", "vid3d"]
    if ranks > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
            "-m",
            "vid3d",
        ]
    command = [*launcher, "generate", str(project), "--image", str(REFERENCE), *MODELS[model]]
    command += ["--set", f"generate.steps={steps}", "--set", "generate.stride=1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    began = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{model}, {ranks} ranks: exit {result.returncode}\n{result.stderr[-2000:]}")
    record = json.loads((project / "manifest.json").read_text())["stages"]["generate"]
    return {
        "model": model,
        "ranks": ranks,
        "threads": threads,
        "step_s": round(record["timings"]["sample"] / steps, 3),
        "wall_s": round(time.time() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ranks", default="1,2,3")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        for ranks in map(int, args.ranks.split(",")):
            rows.append(run(model, ranks, args.steps))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(run(model, 1, args.steps, threads=os.cpu_count() or 1))  # one process on every core
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {args.steps} steps, stride 1")
    print("| model | ranks x threads | s per step | against 1 rank x 1 thread | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["ranks"] == 1 and b["threads"] == 1)
        print(
            f"| {r['model']} | {r['ranks']} x {r['threads']} | {r['step_s']} | "
            f"{r['step_s'] / base['step_s']:.2f} | {r['wall_s']} |"
        )


if __name__ == "__main__":
    main()
