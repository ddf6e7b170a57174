"""Thread count under a cgroup CPU quota (vid3d.threads)."""

import os
import subprocess
import sys

import pytest

from vid3d.threads import affinity_cpus, quota_cpus, set_openmp_defaults


def test_cgroup_quota_is_read_as_whole_cpus(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert quota_cpus(cpu_max) is None
    cpu_max.write_text("50000 100000\n")  # half a CPU: one thread
    assert quota_cpus(cpu_max) == 1
    cpu_max.write_text("250000 100000\n")
    assert quota_cpus(cpu_max) == 3
    assert quota_cpus(tmp_path / "missing") is None


def test_a_quota_below_the_cpus_seen_sets_the_thread_count_unless_the_user_did(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(f"{100000 * (affinity_cpus() + 4)} 100000\n")  # more than there are: not a limit
    environ = {}
    set_openmp_defaults(environ, cpu_max)
    assert environ == {}
    set_openmp_defaults(environ, tmp_path / "missing")
    assert environ == {}
    cpu_max.write_text("50000 100000\n")
    if affinity_cpus() > 1:
        set_openmp_defaults(environ, cpu_max)
        assert environ == {"OMP_NUM_THREADS": "1"}
    environ = {"OMP_NUM_THREADS": "4"}
    set_openmp_defaults(environ, cpu_max)
    assert environ == {"OMP_NUM_THREADS": "4"}


@pytest.mark.skipif(affinity_cpus() < 2, reason="a one-CPU quota limits nothing on one CPU")
def test_the_command_line_sets_it_before_torch_loads(tmp_path):
    """libgomp reads its environment once, when torch loads it: the CLI must set it first."""
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    probe = (
        "import builtins, os, sys\n"
        "from pathlib import Path\n"
        "import vid3d.threads\n"
        "vid3d.threads.CGROUP_CPU_MAX = Path(sys.argv[1])\n"
        "real = builtins.__import__\n"
        "def watch(name, *args, **kwargs):\n"
        "    if name == 'torch' and os.environ.get('OMP_NUM_THREADS') != '1':\n"
        "        sys.exit(3)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = watch\n"
        "import vid3d.cli\n"
        "import torch\n"
        "print(torch.get_num_threads())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(cpu_max)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]
