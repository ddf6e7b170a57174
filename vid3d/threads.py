"""OpenMP settings for torch's CPU threads, chosen before torch (and its libgomp) loads.

In a container whose cgroup CPU quota is below the CPUs it sees, vid3d starts as many threads as
the quota allows: libgomp and torch count the CPUs, not the quota, so a job limited to 2 CPUs on a
64-core node would otherwise start 64 threads. Whatever the user sets in the environment is kept.

The spinning of idle OpenMP threads is left at libgomp's default: benchmarks/shared_cores.py found
no spin count that keeps the speed on free cores and also holds up beside busy processes (README,
"Render farms", says what to set on shared nodes). This module must not import torch or numpy.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def quota_cpus(cpu_max: Path | None = None) -> int | None:
    """CPUs a cgroup v2 CPU quota allows, rounded up; None without a quota."""
    try:
        quota, period = (cpu_max or CGROUP_CPU_MAX).read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def set_openmp_defaults(environ: MutableMapping[str, str] = os.environ, cpu_max: Path | None = None) -> None:
    """OMP_NUM_THREADS for a CPU quota below the CPUs seen, unless the user set it."""
    quota = quota_cpus(cpu_max)
    if quota is not None and quota < affinity_cpus() and "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = str(quota)
