import os

# Before anything loads numpy's or pycolmap's OpenBLAS (see vid3d/cli.py): in-process tests and
# the commands they start inherit these.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vid3d.threads import set_openmp_defaults

os.environ.setdefault("OMP_NUM_THREADS", "2")
set_openmp_defaults()  # as the command line does, for the in-process tests too


@pytest.fixture(scope="session", autouse=True)
def compiled_rasterizer():
    """Build the compiled CPU rasterizer before any test times or interrupts a command that would
    otherwise build it first (about 15 s on a fresh machine)."""
    from vid3d.splats import cpu_kernel

    cpu_kernel.available()


def set_flags(**sections: dict) -> list[str]:
    """`--set` flags from settings grouped by stage: set_flags(splats={"steps": 20}) -> ["--set", "splats.steps=20"]."""
    return [
        flag
        for stage, settings in sections.items()
        for key, value in settings.items()
        for flag in ("--set", f"{stage}.{key}={str(value).lower() if isinstance(value, bool) else value}")
    ]


# The tiny trainings the tests run through the command line, in one place: a renamed or retuned
# setting is one edit here.
TINY_TRAINING = set_flags(splats={"steps": 20, "checkpoint_every": 1000})  # it trains, and nothing more
EXPORT_STEPS = 60
EXPORT_TRAINING = set_flags(
    frames={"count": 12, "min_frames": 8}, splats={"steps": EXPORT_STEPS, "checkpoint_every": 20}
)  # a checkpoint to rebuild splats.ply from
QUALITY_TRAINING = set_flags(
    splats={
        "steps": 500,
        "sh_degree_interval": 100,
        "refine_start": 50,
        "refine_stop": 400,
        "refine_every": 50,
        "checkpoint_every": 50,
        "reset_every": 1000,
    }
)  # reaches test_reconstruct's quality floor
INTERRUPTED_TRAINING = set_flags(
    splats={
        "steps": 150,
        "sh_degree_interval": 50,
        "refine_start": 50,
        "refine_stop": 120,
        "refine_every": 50,
        "checkpoint_every": 50,
        "reset_every": 1000,
    }
)  # the interruption tests: a checkpoint at step 50 of 150
VIEW_STEPS = 60
VIEW_TRAINING = set_flags(splats={"steps": VIEW_STEPS, "densify": False, "sh_degree": 0})  # fixed Gaussians to look at


def run_cli(*args, timeout=600):
    """Run the vid3d command line in a fresh process, as a user or a farm script would."""
    return subprocess.run(
        [sys.executable, "-m", "vid3d.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(*args):
    """Run with --json; return (exit code, the one JSON object on stdout)."""
    result = run_cli(*args, "--json")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return result.returncode, json.loads(lines[0])


def tree(path: Path) -> dict:
    """Every file and folder under path with its content, to prove nothing changed."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.fixture
def cli():
    return run_cli


def with_processors(network, processors, call):
    """call() with attention `processors` set on a diffusers `network` (a UNet or transformer), then
    the network's own processors back: compares a model's outputs under two processor sets."""
    saved = network.attn_processors
    network.set_attn_processor(processors)
    try:
        return call()
    finally:
        network.set_attn_processor(saved)


def error_line(stderr: str) -> str:
    """The command's error: exactly one line starting with 'error:', and it is the last line."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]
