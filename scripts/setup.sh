#!/usr/bin/env bash
# Set up vid3d in .venv; safe to rerun. Installs the CPU build of torch only when the venv has no
# torch: GPU users install a CUDA build of torch into .venv first (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
has_torch() { [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; }
if ! has_torch; then
  # A fresh environment takes about 4.5 GB; pip's own out-of-space error names no remedy.
  free_gb=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt 6 ]; then
    echo "vid3d setup: $(pwd) has ${free_gb} GB of free disk; the environment needs about 6 GB: free some and rerun" >&2
    exit 2
  fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
has_torch || pip install "torch==2.13.0"
pip install -e ".[test,kernels]" 2> >(grep -v -e "^WARNING: Location" >&2)
