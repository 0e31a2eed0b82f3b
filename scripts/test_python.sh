#!/usr/bin/env bash
# The PyTorch package's part of the README's test command (scripts/test.sh
# calls it): makes or reuses a cached virtual environment outside the
# repository, installs only what it lacks (torch from PyPI, with its CUDA
# wheels, once; maturin, pytest, numpy), then `pip install ./python` (maturin
# builds the native layer in release mode into this workspace's target/, so
# reruns only relink) and runs pytest on python/tests, skips listed with
# their reasons (test_sharded.py spawns 2 and 4 gloo processes on this
# machine, each run failing after a timeout rather than hanging).
# ADAFACE_PY_ENV overrides the environment's path;
# ADAFACE_OFFICIAL_HEAD (the official head.py) enables the drop-in test.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_ENV="${ADAFACE_PY_ENV:-$HOME/.cache/adaface/py311}"
if [ ! -x "$PY_ENV/bin/python" ]; then
    PY="$(command -v python3.11 || command -v python3)"
    echo "creating $PY_ENV with $("$PY" --version)"
    "$PY" -m venv "$PY_ENV"
fi
need=()
"$PY_ENV/bin/python" -c "import torch" 2>/dev/null || need+=("torch==2.15.0")  # the version the tests are run against
"$PY_ENV/bin/python" -c "import pytest" 2>/dev/null || need+=("pytest")
"$PY_ENV/bin/python" -c "import numpy" 2>/dev/null || need+=("numpy")
[ -x "$PY_ENV/bin/maturin" ] || need+=("maturin>=1.5,<2")
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing into $PY_ENV: ${need[*]}"
    "$PY_ENV/bin/python" -m pip install -q "${need[@]}"
fi
export PATH="$PY_ENV/bin:$PATH"
python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"

echo "== pip install ./python (adaface-rs)"
python -m pip install -q --no-build-isolation --force-reinstall --no-deps ./python

echo "== pytest python/tests"
python -m pytest -q -rs python/tests
