"""OpenMP settings for torch's CPU threads, chosen before torch (and its libgomp) loads.

Render-farm nodes run several jobs on shared cores. libgomp's threads spin between parallel regions
(300,000 spins by default) and torch's many small operations then wait on a thread that another
process has descheduled: benchmarks/shared_cores.py measured the cost. vid3d sets a short spin
count, and in a container whose cgroup CPU quota is below the CPUs it sees, as many threads as the
quota allows (libgomp and torch count the CPUs, not the quota: a job limited to 2 CPUs on a 64-core
node would otherwise start 64 threads). Whatever the user sets in the environment is kept.
This module must not import torch or numpy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import MutableMapping

# spins before an idle thread sleeps (libgomp's default: 300,000; it drops to 100-1,000 itself only when its
# own threads outnumber the CPUs, not when other processes take them)
SPIN_COUNT = 3_000  # benchmarks/shared_cores.py: as fast as 300,000 alone, a third of its time beside busy processes
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def quota_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs a cgroup v2 CPU quota allows, rounded up; None without a quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def set_openmp_defaults(environ: MutableMapping[str, str] = os.environ, cpu_max: Path = CGROUP_CPU_MAX) -> None:
    """A bounded spin, and threads for a CPU quota, unless the environment already says otherwise."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    quota = quota_cpus(cpu_max)
    if quota is not None and quota < affinity_cpus() and "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = str(quota)
