"""OpenMP defaults for shared render-farm nodes (vid3d.threads)."""

import os
import subprocess
import sys

from vid3d.threads import SPIN_COUNT, affinity_cpus, quota_cpus, set_openmp_defaults

OMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def test_cgroup_quota_is_read_as_whole_cpus(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert quota_cpus(cpu_max) is None
    cpu_max.write_text("50000 100000\n")  # half a CPU: one thread
    assert quota_cpus(cpu_max) == 1
    cpu_max.write_text("250000 100000\n")
    assert quota_cpus(cpu_max) == 3
    assert quota_cpus(tmp_path / "missing") is None


def test_defaults_fill_in_only_what_the_user_left_unset(tmp_path):
    no_quota = tmp_path / "missing"
    environ = {}
    set_openmp_defaults(environ, no_quota)
    assert environ == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}  # threads: torch's own count of the CPUs
    environ = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    set_openmp_defaults(environ, no_quota)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    environ = {"GOMP_SPINCOUNT": "0"}
    set_openmp_defaults(environ, no_quota)
    assert environ == {"GOMP_SPINCOUNT": "0"}


def test_a_cpu_quota_below_the_cpus_seen_sets_the_thread_count(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(f"{100000 * (affinity_cpus() + 4)} 100000\n")  # more than there are: not a limit
    environ = {}
    set_openmp_defaults(environ, cpu_max)
    assert "OMP_NUM_THREADS" not in environ
    cpu_max.write_text("50000 100000\n")
    if affinity_cpus() > 1:
        set_openmp_defaults(environ, cpu_max)
        assert environ["OMP_NUM_THREADS"] == "1"
    environ = {"OMP_NUM_THREADS": "4"}
    set_openmp_defaults(environ, cpu_max)
    assert environ["OMP_NUM_THREADS"] == "4"


def test_the_command_line_sets_them_before_torch_loads():
    """libgomp reads its environment once, when torch loads it: the CLI must set it first."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARIABLES}
    probe = ("import builtins, os, sys\n"
             "real = builtins.__import__\n"
             "def watch(name, *args, **kwargs):\n"
             "    if name == 'torch' and 'GOMP_SPINCOUNT' not in os.environ:\n"
             "        sys.exit(3)\n"
             "    return real(name, *args, **kwargs)\n"
             "builtins.__import__ = watch\n"
             "import vid3d.cli\n"
             "print(os.environ['GOMP_SPINCOUNT'])")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(SPIN_COUNT)]
