#!/usr/bin/env bash
# Side by side on this machine: the fast CPU backend (bench tool, path
# `fused`, plus `naive`) and the official PyTorch head (float32, 2 threads),
# alternating ROUNDS times per shape so both see the same machine load.
# Prints every JSON line and, per shape, the median over rounds and ratios.
#
#   scripts/compare_cpu_torch.sh /path/to/official/head.py [ROUNDS] [ITERS]
#
# PYTHON (default python3) must have torch; the bench binary is built here.
# On a machine shared with other work, OMP_WAIT_POLICY=PASSIVE keeps
# PyTorch's OpenMP threads from spinning against the other processes (rayon,
# used by the Rust side, ignores it); docs/PERF.md reports both.
set -euo pipefail
cd "$(dirname "$0")/.."
HEAD_PY=${1:?path to the official head.py}
ROUNDS=${2:-3}
ITERS=${3:-10}
PYTHON=${PYTHON:-python3}
cargo build --release --example bench >&2
BENCH=${CARGO_TARGET_DIR:-target}/release/examples/bench
OUT=$(mktemp)
for shape in "128 512 10000" "256 512 50000"; do
  read -r B D C <<<"$shape"
  for r in $(seq "$ROUNDS"); do
    RAYON_NUM_THREADS=2 "$BENCH" --device cpu --batch "$B" --dim "$D" --classes "$C" \
      --iters "$ITERS" --json | tee -a "$OUT"
    "$PYTHON" scripts/torch_head_bench.py "$HEAD_PY" --batch "$B" --dim "$D" --classes "$C" \
      --threads 2 --iters "$ITERS" --json | tee -a "$OUT"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
shapes = sorted({(r["batch"], r["dim"], r["classes"]) for r in rows})
for s in shapes:
    at = [r for r in rows if (r["batch"], r["dim"], r["classes"]) == s]
    med = {}
    for path in sorted({r["path"] for r in at}):
        rs = [r for r in at if r["path"] == path]
        med[path] = (statistics.median(r["median_ms"] for r in rs),
                     max(r["peak_extra_mb"] for r in rs),
                     max((r.get("rss_extra_mb") or 0.0) for r in rs),
                     max((r.get("first_step_extra_mb") or r.get("first_call_extra_mb") or 0.0) for r in rs))
    print(f"B={s[0]} D={s[1]} C={s[2]}")
    for path, (ms, mb, rss, first) in med.items():
        print(f"  {path:<20} median {ms:9.2f} ms  peak extra {mb:8.2f} MB  rss {rss:8.2f} MB  first {first:8.2f} MB")
    t = med.get("torch_official_head")
    f = med.get("fused")
    if t and f:
        print(f"  speed-up fused vs torch: {t[0] / f[0]:.2f}x; torch extra / fused heap extra: {t[1] / max(f[1], 1e-9):.1f}x")
PY
rm -f "$OUT"
