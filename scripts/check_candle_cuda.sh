#!/usr/bin/env bash
# Compile check (clippy, all targets, warnings are errors) of the feature
# `candle-cuda` on a machine without a CUDA toolkit or GPU.
#
# candle's CUDA backend runs nvcc in its build script, so this installs
# nvcc 13.0 and the headers it needs from PyPI into the venv that
# scripts/check_kernels.sh uses (default ~/.cache/adaface/cuda13, shared by every checkout; override
# with ADAFACE_CUDA_VENV), puts nvcc on PATH and sets CUDA_COMPUTE_CAP (no
# nvidia-smi here). Nothing is linked: linking needs libcuda, libcublas,
# libcublasLt, libcurand, libnvrtc and libcudart, i.e. a CUDA install
# (`cargo test --no-default-features --features candle-cuda --test candle_cuda`
# there). Without one, scripts/cuda_link_dir.sh links against PyPI's CUDA
# 13.0 libraries and a stub libcuda, and
# `ADAFACE_BUNDLE_CANDLE_CUDA=1 bash scripts/gpu_bundle.sh` bundles the test
# binary for the GPU machine; both reuse this script's build of candle.
#
# The first run spends about 10 minutes (2 cores) in candle's nvcc step.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ADAFACE_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/adaface/cuda13}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
SITE="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
CU="$SITE/nvidia/cu13"
# The same pinned 13.0 wheels as check_kernels.sh (nvcc rejects headers of
# another version); pip leaves them alone when they are already there.
"$VENV/bin/python" -m pip install --quiet -r scripts/cuda13-requirements.txt
export PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
nvcc --version | tail -2 | head -1

cargo clippy --no-default-features --features candle-cuda --all-targets -- -D warnings
