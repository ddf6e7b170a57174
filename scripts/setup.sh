#!/usr/bin/env bash
# Set up vid3d in .venv; safe to rerun. Installs the CPU build of torch only when the venv has no
# torch: GPU users install a CUDA build of torch into .venv first (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install "torch==2.13.0"
fi
pip install -e ".[test,kernels]" 2> >(grep -v -e "^WARNING: Location" >&2)
