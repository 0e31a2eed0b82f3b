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
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BUNDLE="$ROOT/gpu-bundle"
GOLDEN="${ADAFACE_GOLDEN_DIR:-$ROOT/../shared/golden}"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/tests" "$BUNDLE/examples" "$BUNDLE/benches" "$BUNDLE/golden" "$BUNDLE/cases"

# Test binaries: ask cargo for their paths rather than guessing hashes.
cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys, shutil, os
dest = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        name = m["target"]["name"]
        # Only what gpu_check.sh runs: the bundle must stay under the
        # device tool limit of 64 MiB.
        if name not in ("gpu_kernels", "sim_gpu_crosscheck", "naive_baseline"):
            continue
        kind = m["target"]["kind"][0]
        out = os.path.join(dest, name if kind == "test" else f"{name}-{kind}")
        shutil.copy2(m["executable"], out)
        print("test binary:", os.path.basename(out))
' "$BUNDLE/tests"

cargo build --release --examples --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys, shutil, os
dest = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "example" in m["target"]["kind"]:
        if m["target"]["name"] not in ("adaface_eval", "bench"):
            continue
        shutil.copy2(m["executable"], os.path.join(dest, m["target"]["name"]))
        print("example:", m["target"]["name"])
' "$BUNDLE/examples"

# The criterion bench (GPU fused vs naive); the bench profile, like --release.
cargo bench --no-run --features cuda --bench cuda --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys, shutil, os
dest = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda" \
            and "bench" in m["target"]["kind"]:
        shutil.copy2(m["executable"], os.path.join(dest, "cuda"))
        print("bench: cuda")
' "$BUNDLE/benches"
[ -x "$BUNDLE/benches/cuda" ] || { echo "error: the criterion bench benches/cuda did not build" >&2; exit 1; }

strip "$BUNDLE"/tests/* "$BUNDLE"/examples/* "$BUNDLE"/benches/* 2>/dev/null || true
# The PyTorch peer: our script and, when given, the official head.
mkdir -p "$BUNDLE/torch"
cp scripts/torch_head_bench.py "$BUNDLE/torch/"
if [ -n "${HEAD_PY:-}" ] && [ -f "$HEAD_PY" ]; then
    cp "$HEAD_PY" "$BUNDLE/torch/head.py"
    echo "torch peer: $HEAD_PY"
else
    echo "warning: HEAD_PY unset or missing: no official head.py in the bundle, the torch step will be skipped" >&2
fi
# The GPU paths compute in f32: the float32 golden files are enough.
cp "$GOLDEN"/*_float32.json "$BUNDLE/golden/"
cp "$GOLDEN/a_small_default_float64.json" "$BUNDLE/cases/small.json"
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
