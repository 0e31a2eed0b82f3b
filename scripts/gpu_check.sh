#!/usr/bin/env bash
# Runs on the GPU machine (CUDA 13.0, driver 580, H200; no Rust) from the
# bundle made by scripts/gpu_bundle.sh:  bash gpu-bundle/gpu_check.sh
#   1. the GPU tests (gpu_kernels, and the simulator's GPU cross-check), logs in logs/
#   2. compute-sanitizer memcheck and racecheck on a small eval case
#   3. the eval tool on the small and the large case (cuda, f32 and bf16)
#   4. the bench tool, when the bundle has one (issue 4), else the bench test
#      (fused vs naive cuBLAS, B = D = 512, C = 100k and 1M, bf16)
# and prints a short table last. Exit status: non-zero if any step failed.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ ! -d "$HERE/tests" ] && [ -d "$PWD/gpu-bundle/tests" ]; then HERE="$PWD/gpu-bundle"; fi
cd "$HERE"
mkdir -p logs out

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ADAFACE_GOLDEN_DIR="$HERE/golden"
export RUST_BACKTRACE=1

ROWS=()
FAILED=0
step() { # step NAME TIMEOUT_S CMD...: runs CMD, logs it, records a table row
    local name="$1" limit="$2"
    shift 2
    local log="logs/$name.log" t0 rc
    t0=$(date +%s.%N)
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    local secs
    secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')" 2>/dev/null || echo "?")
    local status=PASS
    [ "$rc" -ne 0 ] && status="FAIL(rc=$rc)" && FAILED=1
    ROWS+=("$(printf '%-28s %-12s %8ss  %s' "$name" "$status" "$secs" "$(tail -c 300 "$log" | tr '\n' ' ' | tail -c 90)")")
    echo "== $name: $status (${secs}s, log $log)"
}

echo "== machine"
date -u +%Y-%m-%dT%H:%M:%SZ
cat BUILD_INFO 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nvcc --version 2>/dev/null | tail -1 || true

# 1. GPU tests (skip messages would mean no GPU was visible: treat as failure here).
step gpu_tests 900 ./tests/gpu_kernels --test-threads=1 --nocapture
if grep -q "SKIPPED" logs/gpu_tests.log; then
    ROWS+=("$(printf '%-28s %-12s' gpu_tests_skipped "FAIL(no GPU visible to the tests)")")
    FAILED=1
fi

# The simulator's self-tests cross-checked on the GPU (sim branch), if bundled.
if [ -x tests/sim_gpu_crosscheck ]; then
    step sim_gpu_crosscheck 300 ./tests/sim_gpu_crosscheck --test-threads=1 --nocapture
fi

# The naive cuBLAS baseline against the reference (issue 4), if bundled.
if [ -x tests/naive_baseline ]; then
    step naive_baseline 600 ./tests/naive_baseline --test-threads=1 --nocapture
    if grep -q "SKIPPED" logs/naive_baseline.log; then
        ROWS+=("$(printf '%-28s %-12s' naive_baseline_skipped "FAIL(no GPU or no cuBLAS visible to the tests)")")
        FAILED=1
    fi
fi

# 2. compute-sanitizer on a small case (every kernel of a training step runs).
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        step "sanitizer_$tool" 600 compute-sanitizer --tool "$tool" --error-exitcode 99 \
            ./examples/adaface_eval --input cases/small.json --output "out/small_$tool.json" --device cuda
    done
    step sanitizer_memcheck_bf16 600 compute-sanitizer --tool memcheck --error-exitcode 99 \
        ./examples/adaface_eval --input cases/small.json --output out/small_bf16.json --device cuda --dtype bf16
else
    ROWS+=("$(printf '%-28s %-12s' sanitizer "FAIL(compute-sanitizer not found)")")
    FAILED=1
fi

# 3. Eval tool, GPU vs reference on the large case.
step eval_large_cuda 300 ./examples/adaface_eval --input golden/f_large_float32.json --output out/large_cuda.json --device cuda
step eval_large_reference 300 ./examples/adaface_eval --input golden/f_large_float32.json --output out/large_ref.json --device reference
if [ -f out/large_cuda.json ] && [ -f out/large_ref.json ]; then
    step eval_large_compare 60 python3 - out/large_cuda.json out/large_ref.json <<'PY'
import json, math, sys
a, b = (json.load(open(p))["steps"] for p in sys.argv[1:3])
def rel(x, y):
    x = [float(v) for v in x]; y = [float(v) for v in y]
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y))) / math.sqrt(sum(q * q for q in y))
worst = 0.0
for k, (s, r) in enumerate(zip(a, b)):
    e = (rel([s["loss"]], [r["loss"]]), rel(s["grad_features"], r["grad_features"]), rel(s["grad_weight"], r["grad_weight"]))
    print(f"step {k}: loss {e[0]:.2e} dX {e[1]:.2e} dW {e[2]:.2e}")
    worst = max(worst, *e)
print(f"worst {worst:.2e}")
sys.exit(0 if worst < 1e-4 else 1)
PY
fi

# 4. Bench tool (issue 4), if bundled.
if [ -x examples/bench ]; then
    step bench_c1m_bf16 600 ./examples/bench --device cuda --batch 512 --dim 512 --classes 1000000 --dtype bf16 --json
    step bench_c100k_bf16 300 ./examples/bench --device cuda --batch 512 --dim 512 --classes 100000 --dtype bf16 --json
elif [ -x tests/naive_baseline ]; then
    # Without the bench tool: the library's timing helper (adaface::cuda::bench),
    # B = 512, D = 512, C = 100k and 1M, bf16, fused and naive.
    step bench_fused_vs_naive 900 ./tests/naive_baseline --ignored --nocapture --test-threads=1 \
        bench_b512_d512_bf16_fused_vs_naive
else
    ROWS+=("$(printf '%-28s %-12s' bench "SKIP(no examples/bench in the bundle)")")
fi

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
grep -hE "^(B=|C\*D|workspace|.*step [0-9]: loss)" logs/gpu_tests.log logs/eval_large_compare.log 2>/dev/null | tail -40
[ -f logs/bench_c1m_bf16.log ] && cat logs/bench_c1m_bf16.log logs/bench_c100k_bf16.log
[ -f logs/bench_fused_vs_naive.log ] && grep "^BENCH" logs/bench_fused_vs_naive.log
printf '%-28s %-12s %9s  %s\n' step status time "tail of log"
for r in "${ROWS[@]}"; do echo "$r"; done
exit "$FAILED"
