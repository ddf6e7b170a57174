"""Window-parallel generation under torchrun (gloo on this CPU): the frames of one process, bit for
bit, whatever the number of ranks; rank 0 alone writes the project; a rank that dies ends the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, tree
from test_feedback import EXAMPLES, write_cameras

# One thread per process, as torchrun gives each rank: one process is compared at the same threads.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny(model: str, frames: int, window: int) -> list:
    """A tiny random-weight model's flags: 32x32 frames, 2 steps, feedback acting on the second."""
    sets = ["generate.steps=2", f"generate.window={window}", "generate.height=32", "generate.width=32"]
    return [
        "--model",
        model,
        "--frames",
        frames,
        *(arg for s in [*sets, "generate.feedback_start=1"] for arg in ("--set", s)),
    ]


# per model: flags for at least three windows (stride 1) with anchors, the K/V cache and feedback on
MODELS = {
    "embedded": ["--frames", 16, "--set", "generate.steps=4", "--set", "generate.feedback_start=2"],
    "tiny-svd": tiny("tiny-svd", 6, window=4),
    "tiny-cogvideox": tiny("tiny-cogvideox", 17, window=3),
    "tiny-wan": tiny("tiny-wan", 17, window=3),
}
STABILIZERS = [
    *("--set", "generate.stride=1"),
    *("--set", "generate.anchor_every=4"),
    *("--set", "generate.kv_cache_until=1"),
    *("--set", "generate.feedback=rectify"),
    *("--set", "generate.feedback_iterations=5"),
]


def torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "vid3d"]


def generate(ranks: int, project: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    """`vid3d generate project ...` in one process, or under torchrun with `ranks` ranks."""
    command = [sys.executable, "-m", "vid3d"] if ranks == 1 else torchrun(ranks)
    return subprocess.run(
        [*command, "generate", str(project), *map(str, args), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )


def frames_of(project: Path) -> dict[str, bytes]:
    """generate/'s frames and Gaussians, by name (lossless PNG: equal bytes are equal pixels)."""
    folder = project / "generate"
    return {p.name: p.read_bytes() for p in sorted([*folder.glob("frames/*.png"), *folder.glob("*.ply")])}


def names(project: Path) -> set[str]:
    return {name for name in tree(project) if not name.startswith("logs/")}


@pytest.mark.parametrize("model", [pytest.param(m, marks=[] if m == "embedded" else pytest.mark.slow) for m in MODELS])
def test_ranks_generate_the_frames_of_one_process_bit_for_bit(tmp_path, model):
    args = ["--image", EXAMPLES / "reference.png", *MODELS[model], *STABILIZERS]
    if model != "embedded":  # a model without its own cameras: the feedback loop takes given ones
        frames = MODELS[model][MODELS[model].index("--frames") + 1]
        args += ["--cameras", write_cameras(tmp_path / "cameras.json", frames)]
    one = generate(1, tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr
    metrics = json.loads((tmp_path / "one" / "generate" / "metrics.json").read_text())
    assert len(metrics["feedback"]) >= 1 and (tmp_path / "one" / "generate" / "splats.ply").is_file()
    for ranks in (2, 3):
        spread = generate(ranks, tmp_path / f"ranks{ranks}", *args)
        assert spread.returncode == 0, spread.stderr[-3000:]
        assert frames_of(tmp_path / f"ranks{ranks}") == frames_of(tmp_path / "one"), f"{ranks} ranks"
        assert names(tmp_path / f"ranks{ranks}") == names(tmp_path / "one")  # the other ranks wrote nothing
        outcome = json.loads(spread.stdout.strip().splitlines()[-1])  # rank 0's --json, the only stdout
        assert outcome["stages"]["generate"]["metrics"]["ranks"] == ranks


def test_more_ranks_than_windows_is_refused_with_one_line(tmp_path):
    result = generate(3, tmp_path / "p", "--image", EXAMPLES / "reference.png", "--frames", 4)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "ranks for" in line]
    assert len(lines) == 1 and "3 ranks for 1 windows; start at most 1" in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "p" / "generate").exists()


def test_other_commands_refuse_to_run_once_per_rank(tmp_path):
    command = [*torchrun(2), "poses", str(tmp_path / "p"), "--input", str(EXAMPLES / "orbit.mp4")]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert result.returncode != 0 and "only vid3d generate spreads over torchrun's ranks" in result.stderr
    assert not (tmp_path / "p" / "frames").exists()


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun `parent`'s worker with RANK=rank."""
    for proc in Path("/proc").iterdir():
        try:
            child = proc.name.isdigit() and int((proc / "stat").read_text().split()[3]) == parent
            if child and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_rank_that_dies_ends_every_rank_and_the_project_stays_usable(tmp_path):
    project = tmp_path / "p"
    args = ["generate", str(project), "--image", str(EXAMPLES / "reference.png"), "--frames", 16]
    args += ["--set", "generate.steps=400", "--set", "generate.stride=1"]
    run = subprocess.Popen(
        [*torchrun(2), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        deadline = time.time() + 120
        while not list(project.glob(".tmp-generate-*")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # sampling
        worker = rank_pid(run.pid, 1)
        assert worker is not None and run.poll() is None
        os.kill(worker, signal.SIGKILL)
        killed = time.time()
        _, stderr = run.communicate(timeout=60)
        assert time.time() - killed < 15, "the other rank waited"  # 2.3 s measured (torchrun stops it)
    finally:
        run.kill()
    assert run.returncode != 0
    ours = [line for line in stderr.splitlines() if "another rank stopped" in line or "interrupted" in line]
    assert len(ours) == 1, stderr[-3000:]
    assert not (project / "generate").exists() and not list(project.glob(".tmp-*"))
    again = run_cli("generate", project, "--set", "generate.steps=2")  # the lock was released
    assert again.returncode == 0, again.stderr
