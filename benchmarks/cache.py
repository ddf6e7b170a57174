"""Time `vid3d poses` on the bundled example: the first run, then a cached rerun.

.venv/bin/python benchmarks/cache.py
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

EXAMPLE = Path(__file__).parents[1] / "examples" / "orbit.mp4"


def timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vid3d.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    project = Path(tempfile.mkdtemp()) / "project"
    table = Table("run", "seconds")
    table.add_row("poses, first run (frames + poses)", f"{timed('poses', str(project), '--input', str(EXAMPLE)):.2f}")
    for i in range(3):
        table.add_row(f"poses, cached rerun {i + 1}", f"{timed('poses', str(project)):.2f}")
    table.add_row("status", f"{timed('status', str(project)):.2f}")
    Console().print(table)
    shutil.rmtree(project.parent)


if __name__ == "__main__":
    main()
