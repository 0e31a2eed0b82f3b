#!/usr/bin/env bash
# Runs on the GPU machine (CUDA 13.0, driver 580, H200; no Rust) from the
# bundle made by scripts/gpu_bundle.sh:  bash gpu-bundle/gpu_check.sh [GROUP...]
#   python     the PyTorch package (python/ wheel): its CUDA tests (the
#              unsharded loss, then ShardedAdaFaceLoss on CUDA tensors over
#              gloo and NCCL) and python/bench.py on CUDA, B = D = 512,
#              C = 100k
#   tests      the GPU tests (gpu_kernels, the class-sharded step, the
#              simulator's GPU cross-check, the naive cuBLAS baseline, the
#              candle op on CUDA tensors when bundled as
#              tests/candle_cuda.xz), logs in logs/
#   eval       the eval tool on the large case (cuda vs reference)
#   bench      the bench tool, B = D = 512, bf16, C = 1M and 100k
#   criterion  the criterion bench benches/cuda (fused vs naive, forward and
#              forward+backward, B 128/512, C 10k/100k/1M), medians from
#              out/criterion
#   torch      the official PyTorch head (scripts/torch_head_bench.py with
#              the head.py given to gpu_bundle.sh as HEAD_PY), B = D = 512,
#              C = 100k and 1M, f32 / autocast bf16 / bf16 upcast
#   sanitizer  compute-sanitizer memcheck and racecheck on a small eval case,
#              and memcheck, racecheck, synccheck on the flash kernels
#              (mma.sync, and wgmma on compute capability 9.0)
#   profile    Nsight Compute on one forward_dx and one dw launch of each
#              flash kernel set (mma.sync, wgmma)
# in this order (all by default, or only the GROUPs named), then prints the
# side-by-side table (fused / naive / torch) and a table of the steps last.
# Every step has a timeout, and the whole run a budget of
# GPU_CHECK_BUDGET_S seconds (default 480): a step gets at most what is
# left, and steps past the budget are listed as SKIP(budget).
# Exit status: non-zero if any step failed.
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
ONLY=" $* "
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
START=$(date +%s)
PYTHON="${PYTHON:-python3}"
want() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
step() { # step NAME TIMEOUT_S CMD...: runs CMD, logs it, records a table row
    local name="$1" limit="$2"
    shift 2
    local log="logs/$name.log" t0 rc
    rm -f "$log"
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        ROWS+=("$(printf '%-28s %-12s' "$name" "SKIP(budget)")")
        echo "== $name: SKIP (budget of ${BUDGET}s spent)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    local secs
    secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')" 2>/dev/null || echo "?")
    local status=PASS
    [ "$rc" -ne 0 ] && status="FAIL(rc=$rc)" && FAILED=1
    { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && status="TIMEOUT(${limit}s)"
    ROWS+=("$(printf '%-28s %-12s %8ss  %s' "$name" "$status" "$secs" "$(tail -c 300 "$log" | tr '\n' ' ' | tail -c 90)")")
    echo "== $name: $status (${secs}s, log $log)"
}

echo "== machine"
date -u +%Y-%m-%dT%H:%M:%SZ
cat BUILD_INFO 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nvcc --version 2>/dev/null | tail -1 || true

# 1. GPU tests (skip messages would mean no GPU was visible: treat as failure here).
if want tests; then
    step gpu_tests 150 ./tests/gpu_kernels --include-ignored --test-threads=1 --nocapture
    if grep -q "SKIPPED" logs/gpu_tests.log 2>/dev/null; then
        ROWS+=("$(printf '%-28s %-12s' gpu_tests_skipped "FAIL(no GPU visible to the tests)")")
        FAILED=1
    fi

    # The clamp and clip gates against finite differences, on the GPU too.
    if [ -x tests/gates ]; then
        step gates 60 ./tests/gates --include-ignored --test-threads=1 --nocapture
    fi

    # The class-sharded step (K shards on streams of one GPU) against the
    # unsharded step, if bundled.
    if [ -x tests/gpu_sharding ]; then
        step gpu_sharding 90 ./tests/gpu_sharding --include-ignored --test-threads=1 --nocapture
    fi

    # The checks every backend runs (tests/backends.rs), on the CUDA
    # backend, if bundled.
    if [ -x tests/backends ]; then
        step backends_cuda 60 ./tests/backends --include-ignored --test-threads=1 --nocapture ::cuda
    fi

    # The simulator's self-tests cross-checked on the GPU (sim branch), if bundled.
    if [ -x tests/sim_gpu_crosscheck ]; then
        step sim_gpu_crosscheck 60 ./tests/sim_gpu_crosscheck --include-ignored --test-threads=1 --nocapture
    fi

    # The naive cuBLAS baseline against the reference, if bundled.
    if [ -x tests/naive_baseline ]; then
        step naive_baseline 90 ./tests/naive_baseline --include-ignored --skip bench_b512 --test-threads=1 --nocapture
        if grep -q "SKIPPED" logs/naive_baseline.log 2>/dev/null; then
            ROWS+=("$(printf '%-28s %-12s' naive_baseline_skipped "FAIL(no GPU or no cuBLAS visible to the tests)")")
            FAILED=1
        fi
    fi

    # The class-chunked cuBLAS path against the reference, if bundled.
    if [ -x tests/chunked_path ]; then
        step chunked_path 90 ./tests/chunked_path --include-ignored --test-threads=1 --nocapture
    fi

    # The candle op on CUDA tensors (tests/candle_cuda.rs), if bundled
    # (ADAFACE_BUNDLE_CANDLE_CUDA=1): xz-compressed, unpacked here; xz or
    # else python3's lzma.
    if [ -f tests/candle_cuda.xz ]; then
        if [ ! -x tests/candle_cuda ]; then
            if command -v xz >/dev/null; then
                xz -dc tests/candle_cuda.xz > tests/candle_cuda.tmp
            else
                python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                    tests/candle_cuda.xz tests/candle_cuda.tmp
            fi && chmod +x tests/candle_cuda.tmp && mv tests/candle_cuda.tmp tests/candle_cuda
        fi
        step candle_cuda 90 ./tests/candle_cuda --include-ignored --test-threads=1 --nocapture
        if grep -q "SKIPPED" logs/candle_cuda.log 2>/dev/null; then
            ROWS+=("$(printf '%-28s %-12s' candle_cuda_skipped "FAIL(no GPU visible to candle)")")
            FAILED=1
        fi
    fi
fi

# 1b. The PyTorch package on CUDA tensors (python/tests/test_cuda.py and the
# drop-in test when the official head is bundled, then
# python/tests/test_sharded_cuda.py), if bundled: the wheel
# into a venv over the machine's torch; a skip means no GPU was visible.
if want python && [ -d python/wheels ]; then
    if [ ! -x out/pyenv/bin/python ]; then
        "$PYTHON" -m venv --system-site-packages out/pyenv && \
            out/pyenv/bin/python -m pip install -q --no-deps --no-index python/wheels/*.whl
    fi
    [ -f torch/head.py ] && export ADAFACE_OFFICIAL_HEAD="$HERE/torch/head.py"
    step python_cuda 240 out/pyenv/bin/python -m pytest -rs -p no:cacheprovider python/tests/test_cuda.py python/tests/test_official.py
    if grep -q "no CUDA GPU visible" logs/python_cuda.log 2>/dev/null; then
        ROWS+=("$(printf '%-28s %-12s' python_cuda_skipped "FAIL(no GPU visible to torch)")")
        FAILED=1
    fi
    # ShardedAdaFaceLoss on CUDA tensors: K native shards in process, the
    # module over a world of 1 (gloo, NCCL) in spawned processes, and over
    # NCCL with 2 processes when 2 GPUs are visible (else a listed skip).
    step python_sharded_cuda 240 out/pyenv/bin/python -m pytest -rs -p no:cacheprovider python/tests/test_sharded_cuda.py
    if grep -q "no CUDA GPU visible" logs/python_sharded_cuda.log 2>/dev/null; then
        ROWS+=("$(printf '%-28s %-12s' python_sharded_cuda_skipped "FAIL(no GPU visible to torch)")")
        FAILED=1
    fi
    step python_bench 120 out/pyenv/bin/python python/bench.py --batch 512 --dim 512 --classes 100000 --device cuda --iters 20 --warmup 3
fi

# 2. Eval tool, GPU vs reference on the large case.
if want eval; then
    step eval_large_cuda 60 ./examples/adaface_eval --input golden/f_large_float32.json --output out/large_cuda.json --device cuda
    step eval_large_reference 90 ./examples/adaface_eval --input golden/f_large_float32.json --output out/large_ref.json --device reference
    if [ -f out/large_cuda.json ] && [ -f out/large_ref.json ]; then
        step eval_large_compare 30 python3 - out/large_cuda.json out/large_ref.json <<'PY'
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
fi

# 3. Bench tool, if bundled: JSON lines for the side-by-side table.
if want bench; then
    if [ -x examples/bench ]; then
        step bench_c1m_bf16 90 ./examples/bench --device cuda --batch 512 --dim 512 --classes 1000000 --dtype bf16 --iters 10 --json
        step bench_c100k_bf16 45 ./examples/bench --device cuda --batch 512 --dim 512 --classes 100000 --dtype bf16 --iters 20 --json
        step bench_c100k_f16 45 ./examples/bench --device cuda --batch 512 --dim 512 --classes 100000 --dtype f16 --iters 20 --json
    elif [ -x tests/naive_baseline ]; then
        # Without the bench tool: the library's timing helper (adaface::cuda::bench),
        # B = 512, D = 512, C = 100k and 1M, bf16, fused and naive.
        step bench_fused_vs_naive 120 ./tests/naive_baseline --ignored --nocapture --test-threads=1 \
            bench_b512_d512_bf16_fused_vs_naive
    else
        ROWS+=("$(printf '%-28s %-12s' bench "SKIP(no examples/bench in the bundle)")")
    fi
fi

# 4. The criterion bench (benches/cuda.rs), about a minute on an H200.
if want criterion; then
    if [ -x benches/cuda ]; then
        rm -rf out/criterion
        step criterion_cuda 180 env CRITERION_HOME="$HERE/out/criterion" ./benches/cuda --bench --noplot
        if grep -q "SKIPPED" logs/criterion_cuda.log 2>/dev/null; then
            ROWS+=("$(printf '%-28s %-12s' criterion_cuda_skipped "FAIL(no GPU visible to the bench)")")
            FAILED=1
        fi
    else
        ROWS+=("$(printf '%-28s %-12s' criterion_cuda "SKIP(no benches/cuda in the bundle)")")
    fi
fi

# 5. The official PyTorch head on the same GPU (the peer), if bundled.
if want torch; then
    if [ -f torch/head.py ] && [ -f torch/torch_head_bench.py ]; then
        for c in 100000 1000000; do
            step "torch_head_c$c" $([ "$c" -ge 1000000 ] && echo 150 || echo 90) \
                "$PYTHON" torch/torch_head_bench.py torch/head.py --device cuda \
                --batch 512 --dim 512 --classes "$c" --modes f32,autocast_bf16,upcast_bf16 --json
        done
    else
        ROWS+=("$(printf '%-28s %-12s' torch_head "SKIP(no torch/head.py in the bundle: HEAD_PY unset when bundling)")")
    fi
fi

# 6. compute-sanitizer on small cases: every kernel family (tiled, flash on
# mma.sync and wgmma, f16, the margin family, the cuBLAS paths' kernels).
if want sanitizer; then
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            step "sanitizer_$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 99 \
                ./examples/adaface_eval --input cases/small.json --output "out/small_$tool.json" --device cuda
        done
        step sanitizer_memcheck_bf16 120 compute-sanitizer --tool memcheck --error-exitcode 99 \
            ./examples/adaface_eval --input cases/small.json --output out/small_bf16.json --device cuda --dtype bf16
        # The flash family (bf16, D = 128 here): cp.async staging, ldmatrix,
        # 215 KiB-class dynamic shared memory and four barriers per tile.
        for tool in memcheck racecheck synccheck; do
            step "sanitizer_${tool}_flash" 120 compute-sanitizer --tool "$tool" --error-exitcode 99 \
                ./examples/adaface_eval --input golden/f_large_float32.json --output "out/large_flash_$tool.json" \
                --device cuda --dtype bf16
        done
        # Every flash tile kernel at an awkward shape through the bench tool:
        # mma.sync (fused, fused_exact) and, on compute capability 9.0,
        # wgmma (fused_wgmma: async proxy, swizzled tiles, 1 KiB alignment).
        # 9000 classes are 141 class tiles: on 132 SMs some persistent dW
        # blocks take two, staging the second's W under the first's stores.
        for tool in memcheck racecheck synccheck; do
            step "sanitizer_${tool}_bench" 150 compute-sanitizer --tool "$tool" --error-exitcode 99 \
                ./examples/bench --device cuda --batch 65 --dim 256 --classes 9000 --dtype bf16 --iters 1 \
                --skip-naive --forward
        done
        # CurricularFace and MagFace (tiled f32 and flash bf16): the stats
        # kernel's reads of W, the thresholds, the combine's radial terms.
        for margin in curricular magface; do
            for dtype in f32 bf16; do
                step "sanitizer_memcheck_${margin}_$dtype" 90 compute-sanitizer --tool memcheck --error-exitcode 99 \
                    ./examples/adaface_eval --input "cases/small_$margin.json" --output "out/small_${margin}_$dtype.json" \
                    --device cuda --dtype "$dtype"
            done
        done
        # The cuBLAS paths' own kernels (naive, chunked) beside the fused ones.
        step sanitizer_memcheck_cublas_paths 150 compute-sanitizer --tool memcheck --error-exitcode 99 \
            ./examples/bench --device cuda --batch 65 --dim 96 --classes 3000 --dtype bf16 --iters 1
        # f16 flash: the extra barrier and shared peaks of its per-tile scales.
        step sanitizer_racecheck_bench_f16 150 compute-sanitizer --tool racecheck --error-exitcode 99 \
            ./examples/bench --device cuda --batch 65 --dim 96 --classes 3000 --dtype f16 --iters 1 --skip-naive
    else
        ROWS+=("$(printf '%-28s %-12s' sanitizer "FAIL(compute-sanitizer not found)")")
        FAILED=1
    fi
fi

# 7. Nsight Compute on the two flash tile kernels at B = D = 512, C = 100k
# (one launch each): throughput against the SM's peaks, tensor pipe use and
# warp stall reasons, to choose the next kernel version (docs/PERF.md, v3).
if want profile; then
    if command -v ncu >/dev/null; then
        step ncu_flash 150 ncu --kernel-name \
            regex:'adaface_flash_(wg_)?forward_dx_bf16_i64|adaface_flash_(wg_)?dw_bf16_i64' \
            --launch-count 4 --section SpeedOfLight --section ComputeWorkloadAnalysis \
            --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
            ./examples/bench --device cuda --batch 512 --dim 512 --classes 100000 --dtype bf16 --iters 1 --skip-naive
    else
        ROWS+=("$(printf '%-28s %-12s' ncu_flash "SKIP(ncu not found)")")
    fi
fi

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(($(date +%s) - START))s of ${BUDGET}s)"
grep -hE "^(B=|C\*D|workspace|.*step [0-9]: loss)" logs/gpu_tests.log logs/eval_large_compare.log 2>/dev/null | tail -40
[ -f logs/bench_fused_vs_naive.log ] && grep "^BENCH" logs/bench_fused_vs_naive.log
grep -h "^memory\|^ERROR" logs/criterion_cuda.log 2>/dev/null
# Side by side (bench tool, torch head, criterion medians); python3 without torch suffices.
python3 - logs out/criterion <<'PY' || echo "(side-by-side table failed)"
import glob, json, os, sys
logs, crit = sys.argv[1:3]

rows = []
for path in sorted(glob.glob(os.path.join(logs, "*.log"))):
    for line in open(path, errors="replace"):
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass

def fmt(r):
    if r is None:
        return "-"
    if "error" in r:
        return "ERROR " + r["error"][:70]
    mb = r.get("peak_extra_mb")
    mem = f"{mb:8.1f} MB" if mb is not None else "   (criterion median; memory: the 'memory' lines)"
    return f"{r['median_ms']:9.3f} ms {r['tflops']:6.1f} TF {mem}"

# Criterion medians (ns per step), keyed like the JSON rows.
crit_rows = []
for bj in glob.glob(os.path.join(crit, "**", "new", "benchmark.json"), recursive=True):
    try:
        b = json.load(open(bj))
        est = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
    except (OSError, ValueError):
        continue
    ns = est["median"]["point_estimate"]
    flops = (b.get("throughput") or {}).get("Elements") or 0
    crit_rows.append((b["group_id"], b["function_id"], b["value_str"], ns / 1e6, flops / (ns * 1e-9) / 1e12 if ns else 0.0))

print()
print("== side by side: B=512 D=512 bf16 forward+backward (median ms, TFLOP/s at 8BDC, extra device MB)")
cols = ["fused", "fused_exact", "fused_wgmma", "naive", "chunked", "torch_official_head", "torch_official_head_autocast_bf16", "torch_official_head_upcast_bf16"]
for c in (100000, 1000000):
    at = {r["path"]: r for r in rows if r.get("batch") == 512 and r.get("dim") == 512 and r.get("classes") == c
          and r.get("device") == "cuda"
          and (r.get("dtype") == "bf16" or r.get("path", "").startswith("torch_official_head"))}
    # Without the bench tool, criterion's forward+backward medians stand in.
    for g, f, v, ms, tf in crit_rows:
        if g == "cuda_forward_backward_bf16" and v == f"B512_D512_C{c}" and f not in at:
            at[f] = {"median_ms": ms, "tflops": tf, "peak_extra_mb": None}
    print(f"C={c}")
    for col in cols:
        print(f"  {col:<36} {fmt(at.get(col))}")
    f = at.get("fused")
    if f and "error" not in f:
        for col in cols[1:]:
            o = at.get(col)
            if o and "error" not in o:
                print(f"  {col + ' / fused':<36} {o['median_ms'] / f['median_ms']:6.2f}x time")

if crit_rows:
    print()
    print("== criterion benches/cuda (median per step; TFLOP/s at 8BDC fwd+bwd, 2BDC fwd)")
    print(f"  {'group':<28} {'path':<6} {'case':<20} {'median ms':>10} {'TFLOP/s':>8}")
    for g, f, v, ms, tf in sorted(crit_rows):
        print(f"  {g:<28} {f:<6} {v:<20} {ms:10.3f} {tf:8.2f}")
PY
echo
printf '%-28s %-12s %9s  %s\n' step status time "tail of log"
for r in "${ROWS[@]}"; do echo "$r"; done
exit "$FAILED"
