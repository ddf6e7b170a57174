#!/usr/bin/env bash
# Blender 5 as a Python module (PyPI's bpy, built with USD, unlike Debian's Blender 3.4) in its own
# venv, .venv-blender: it pins numpy<2 and Python 3.11. tests/test_blender.py imports export's USD
# scene with it; vid3d itself never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-blender/bin/python ]; then
  python3.11 -m venv .venv-blender
  .venv-blender/bin/pip install -q "bpy==5.0.1"
fi
