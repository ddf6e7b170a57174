"""scripts/gpu_check.sh, the one command a lent GPU runs, must at least start every check here:
its dry run on the CPU runs what it can, skips what needs CUDA, and fails none."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_gpu_check_dry_run_starts_every_check(tmp_path):
    out = tmp_path / "gpu-check.json"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert list(results) == [
        "environment",
        "attention",
        "generate",
        "ranks",
        "gsplat_build",
        "feedback",
        "rasterizer",
        "surface_channels",
        "reconstruct",
    ]
    assert {name: r["status"] for name, r in results.items() if r["status"] == "failed"} == {}
    assert results["generate"]["status"] == "ok" and len(results["generate"]["runs"]) == 2
    assert all(run["frames"][0] >= 8 for run in results["generate"]["runs"])
    assert results["ranks"]["status"] == "ok" and results["ranks"]["bit_identical"]  # gloo on the CPU
    assert results["ranks"]["runs"]["2"]["backend"] == "gloo"
    assert results["rasterizer"]["status"] == "skipped" and "torch backend only" in results["rasterizer"]["why"]
    assert results["feedback"]["status"] == "skipped" and "torch backend only" in results["feedback"]["why"]
