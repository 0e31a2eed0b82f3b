#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh
# machine (libclang for the bindings test, NVRTC/ptxas 13.0 from PyPI for the
# kernel compile check), then runs everything. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== set-up: libclang (the bindings regeneration test skips without it)"
if ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
    else
        echo "libclang not found and cannot install it: the bindings test will skip"
    fi
fi

echo "== tests: reference, CPU backend, simulated kernels, candle op, examples, doc-tests"
cargo test --features candle

echo "== kernels: NVRTC 13.0 compile for sm_80 and sm_90, no register spills"
bash scripts/check_kernels.sh

echo "== PyTorch package: cached venv, pip install ./python, pytest python/tests"
bash scripts/test_python.sh
