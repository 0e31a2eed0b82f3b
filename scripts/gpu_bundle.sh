#!/usr/bin/env bash
# Builds everything the GPU machine needs and copies it into ./gpu-bundle/
# (git-ignored): the release test binaries, the example binaries (eval tool,
# compile check, and the bench tool when it exists), the golden case files
# and scripts/gpu_check.sh. The GPU machine (CUDA 13.0, driver 580, no Rust)
# then runs `bash gpu-bundle/gpu_check.sh`. Both machines are x86-64 Linux.
# Also bundled: the criterion bench benches/cuda.rs (as benches/cuda) and,
# for the PyTorch peer, scripts/torch_head_bench.py with the official head
# (github mk-minchul/AdaFace head.py, not part of this repository) from
#   HEAD_PY=/path/to/head.py bash scripts/gpu_bundle.sh
# (without HEAD_PY the torch step of gpu_check.sh is skipped).
# Opt-in: ADAFACE_BUNDLE_CANDLE_CUDA=1 also bundles tests/candle_cuda.rs (the
# candle op on CUDA tensors) as tests/candle_cuda.xz, linked here against the
# CUDA 13.0 libraries of PyPI and a stub libcuda (scripts/cuda_link_dir.sh).
# It uses the dev profile, whose candle kernels scripts/check_candle_cuda.sh
# has already built (that script's first run: about 10 minutes of nvcc);
# stripped it is about 85 MiB (candle's kernels are embedded), so it travels
# xz-compressed (about 14 MiB) and gpu_check.sh unpacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BUNDLE="$ROOT/gpu-bundle"
GOLDEN="${ADAFACE_GOLDEN_DIR:-$ROOT/tests/golden}"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/tests" "$BUNDLE/examples" "$BUNDLE/benches" "$BUNDLE/golden" "$BUNDLE/cases"

# copy_artifacts DEST KIND NAME...: reads cargo's JSON messages on stdin and
# copies the executables of the targets NAME of kind KIND (test, example,
# bench) into DEST, under their target names. Asking cargo for the paths
# rather than guessing hashes.
copy_artifacts() {
    python3 -c '
import json, os, shutil, sys
dest, kind, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") in names \
            and kind in t.get("kind", []):
        shutil.copy2(m["executable"], os.path.join(dest, t["name"]))
        print(kind + ":", t["name"])
' "$@"
}

# Only what gpu_check.sh runs: the bundle must stay under the device tool's
# limit of 64 MiB.
cargo test --release --no-run --message-format=json 2>/dev/null \
    | copy_artifacts "$BUNDLE/tests" test gpu_kernels sim_gpu_crosscheck naive_baseline chunked_path gates gpu_sharding backends
cargo build --release --examples --message-format=json 2>/dev/null \
    | copy_artifacts "$BUNDLE/examples" example adaface_eval bench
# The criterion bench (GPU fused vs naive); the bench profile, like --release.
cargo bench --no-run --features cuda --bench cuda --message-format=json 2>/dev/null \
    | copy_artifacts "$BUNDLE/benches" bench cuda
[ -x "$BUNDLE/benches/cuda" ] || { echo "error: the criterion bench benches/cuda did not build" >&2; exit 1; }

strip "$BUNDLE"/tests/* "$BUNDLE"/examples/* "$BUNDLE"/benches/* 2>/dev/null || true


if [ "${ADAFACE_BUNDLE_CANDLE_CUDA:-0}" = 1 ]; then
    VENV="${ADAFACE_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/adaface/cuda13}"
    NVCC_BIN="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)/nvidia/cu13/bin"
    [ -x "$NVCC_BIN/nvcc" ] || { echo "error: no nvcc in $VENV: run scripts/check_candle_cuda.sh first" >&2; exit 1; }
    LINK_DIR="$(bash scripts/cuda_link_dir.sh)"
    # `cargo rustc` passes -L to the test crate only: no other crate rebuilds.
    # Same PATH and CUDA_COMPUTE_CAP as check_candle_cuda.sh, so candle's
    # kernels are not rebuilt either.
    PATH="$NVCC_BIN:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
        cargo rustc --no-default-features --features candle-cuda --test candle_cuda \
        --message-format=json-render-diagnostics -- -L "native=$LINK_DIR" \
        | copy_artifacts "$BUNDLE/tests" test candle_cuda
    [ -x "$BUNDLE/tests/candle_cuda" ] || { echo "error: tests/candle_cuda did not build" >&2; exit 1; }
    # What the GPU machine must provide: the driver and CUDA 13.0's libraries.
    readelf -d "$BUNDLE/tests/candle_cuda" | grep NEEDED | grep -E "cuda|cublas|curand|nvrtc"
    strip "$BUNDLE/tests/candle_cuda"
    xz -T2 -3 "$BUNDLE/tests/candle_cuda"
fi
# The PyTorch peer: our script and, when given, the official head.
mkdir -p "$BUNDLE/torch"
cp scripts/torch_head_bench.py "$BUNDLE/torch/"
if [ -n "${HEAD_PY:-}" ] && [ -f "$HEAD_PY" ]; then
    cp "$HEAD_PY" "$BUNDLE/torch/head.py"
    echo "torch peer: $HEAD_PY"
else
    echo "warning: HEAD_PY unset or missing: no official head.py in the bundle, the torch step will be skipped" >&2
fi
# The PyTorch package (python/): one abi3 wheel, its tests and bench, for the
# `python` group of gpu_check.sh (needs maturin: scripts/test_python.sh's
# cached environment has it).
MATURIN="${ADAFACE_PY_ENV:-$HOME/.cache/adaface/py311}/bin/maturin"
command -v maturin >/dev/null && MATURIN="$(command -v maturin)"
if [ -x "$MATURIN" ]; then
    mkdir -p "$BUNDLE/python"
    "$MATURIN" build --release --strip -q -m python/Cargo.toml -o "$BUNDLE/python/wheels" >/dev/null
    cp -r python/tests "$BUNDLE/python/tests"
    cp python/bench.py "$BUNDLE/python/"
    rm -rf "$BUNDLE/python/tests/__pycache__"
    echo "python: $(ls "$BUNDLE/python/wheels")"
else
    echo "warning: no maturin: the PyTorch package is not bundled (run scripts/test_python.sh once)" >&2
fi
# The GPU paths compute in f32: the float32 golden files are enough.
# (The large cases are zlib-compressed in the repository: inflated here, so
# that the eval tool on the GPU machine reads them as they are.)
for f in "$GOLDEN"/*_float32.json "$GOLDEN"/*_float32.json.zz; do
    [ -e "$f" ] || continue
    case "$f" in
        *.zz) python3 -c 'import sys, zlib; open(sys.argv[2], "wb").write(zlib.decompress(open(sys.argv[1], "rb").read()))' \
                  "$f" "$BUNDLE/golden/$(basename "${f%.zz}")" ;;
        *) cp "$f" "$BUNDLE/golden/" ;;
    esac
done
cp "$GOLDEN/a_small_default_float64.json" "$BUNDLE/cases/small.json"
# The same small case under CurricularFace and MagFace: the sanitizer runs
# their extra kernel paths (the stats kernel's reads of W, the combine's
# radial terms).
python3 - "$BUNDLE/cases" <<'PY'
import json, sys
base = json.load(open(f"{sys.argv[1]}/small.json"))
for name, extra in {
    "curricular": {"margin": "curricularface", "m": 0.5},
    "magface": {"margin": "magface", "l_a": 1.0, "u_a": 40.0},
}.items():
    case = dict(base, config=dict(base["config"], **extra))
    json.dump(case, open(f"{sys.argv[1]}/small_{name}.json", "w"))
PY
cp scripts/gpu_check.sh "$BUNDLE/gpu_check.sh"
chmod +x "$BUNDLE/gpu_check.sh"
{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
} > "$BUNDLE/BUILD_INFO"
du -sh "$BUNDLE"
if [ "$(du -sm "$BUNDLE" | cut -f1)" -gt 60 ]; then
    echo "warning: the bundle is over 60 MiB; the device tool carries at most 64 MiB" >&2
fi
ls "$BUNDLE/tests" "$BUNDLE/examples" "$BUNDLE/benches" "$BUNDLE/torch"
