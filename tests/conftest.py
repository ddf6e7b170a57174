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


def run_cli(*args, timeout=600):
    """Run the vid3d command line in a fresh process, as a user or a farm script would."""
    return subprocess.run(
        [sys.executable, "-m", "vid3d.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
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
