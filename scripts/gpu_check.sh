#!/usr/bin/env bash
# Every CUDA check in one command for a lent GPU machine (issue 15; docs/gpu-checks.md): it writes
# $OUT/gpu-check.json (the device tool's $OUT; runs/gpu-check/ elsewhere) and stays under 8 minutes.
#
#   bash scripts/gpu_check.sh --prepare   here, once: wheels the GPU image lacks into .whl/, and the
#                                         bundled example's frames and poses (the GPU has no pycolmap)
#   device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl", "runs/gpu-check/project"], timeout_s=540)
#   bash scripts/gpu_check.sh --dry-run   here: every check starts on the CPU; what needs CUDA skips
set -uo pipefail
cd "$(dirname "$0")/.."

# Not in the GPU image (its package list: the device tool's KINDS.md). Same versions as here.
# (imageio-ffmpeg's 68 MB wheel is past what a call may carry: the checks write no video.)
WHEELS="gsplat==1.5.3 diffusers==0.42.1 plyfile==1.1.5 pytorch-msssim==1.0.0"

case "${1:-}" in
--prepare)
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS || exit 1
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    rm -rf runs/gpu-check/project
    .venv/bin/python -m vid3d.cli poses runs/gpu-check/project --input examples/orbit.mp4 || exit 1  # [splats] only differs in --preset fast
    du -sh .whl runs/gpu-check/project
    exit 0 ;;
--dry-run)
    exec .venv/bin/python scripts/gpu_check.py --dry-run --out "${2:-runs/gpu-check/dry-run.json}" ;;
esac

OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
fi
mkdir -p /tmp/site && ln -sfn "$PWD/vid3d_kernels" /tmp/site/vid3d_kernels  # vid3d and its kernels from this tree
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
OUT=$OUT timeout 480 python3 scripts/gpu_check.py --out "$OUT/gpu-check.json"
