#!/usr/bin/env bash
# Compile check of every kernel variant for sm_80 and sm_90a with NVRTC 13.0
# (through the crate's own NVRTC path), then ptxas -v on each PTX: prints a
# table of registers / shared memory / stack / spills and FAILS on any spill
# in the main kernels (stats, forward, combine, backward, dx_finish, flash),
# when the wgmma kernels are missing from the sm_90a PTX (or present in
# another), or when ptxas says it serialises them; then the async-proxy
# ordering guards (scripts/ptx_guards.py, with its self-test) on the sm_90a
# PTX: fences the simulator cannot check; last, the NVRTC compile of the
# simulator self-test kernels the GPU cross-check runs.
#
# Installs NVRTC and nvcc/ptxas 13.0 from PyPI (scripts/cuda13-requirements.txt)
# into a venv (default
# ~/.cache/adaface/cuda13, shared by every checkout; override with ADAFACE_CUDA_VENV). 13.0 is
# pinned: the target machine's driver (580, CUDA 13.0) cannot load PTX from
# a newer compiler, and the nvcc wheels must all be the same version.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ADAFACE_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/adaface/cuda13}"
ARCHES="${ADAFACE_ARCHES:-sm_80 sm_90a}"
OUT="${ADAFACE_PTX_OUT:-$PWD/target/kernel-check}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# The marker names the requirements file's content, so an older venv is
# brought up to date.
MARK="$VENV/.adaface-$(sha256sum scripts/cuda13-requirements.txt | cut -c1-16)"
if ! "$VENV/bin/python" -c "import nvidia" 2>/dev/null || [ ! -e "$MARK" ]; then
    "$VENV/bin/python" -m pip install --quiet -r scripts/cuda13-requirements.txt
    touch "$MARK"
fi
SITE="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
CU="$SITE/nvidia/cu13"
export LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PTXAS="$CU/bin/ptxas"
"$PTXAS" --version | tail -1

rm -rf "$OUT"
mkdir -p "$OUT"
cargo build --quiet --example compile_kernels
for arch in $ARCHES; do
    cargo run --quiet --example compile_kernels -- --arch "$arch" --out "$OUT" >/dev/null
    "$PTXAS" -arch="$arch" -v "$OUT/adaface_$arch.ptx" -o "$OUT/adaface_$arch.cubin" 2>"$OUT/ptxas_$arch.log"
done

python3 - "$OUT" $ARCHES <<'PY'
import re, sys
out, arches = sys.argv[1], sys.argv[2:]
# The local memory per thread the CUDA backend accepts when it loads a
# kernel (src/cuda/resources.rs): every stack frame must fit it.
planned_local = int(re.search(r"PLANNED_LOCAL_BYTES: u32 = (\d+);", open("src/cuda/resources.rs").read()).group(1))
main = re.compile(r"^adaface_(stats|forward|combine|backward|dx_finish|naive|chunked|shard|flash)")
rows, bad = [], []
for arch in arches:
    fn = None
    info = {}
    for line in open(f"{out}/ptxas_{arch}.log"):
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            fn = m.group(1)
            info[fn] = {"regs": 0, "smem": 0, "stack": 0, "st": 0, "ld": 0}
            continue
        if fn is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            info[fn].update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            info[fn]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            info[fn]["smem"] = int(s.group(1)) if s else 0
    if not info:
        bad.append(f"{arch}: ptxas reported no entry functions")
    for fn in sorted(info):
        i = info[fn]
        rows.append((arch, fn, i))
        if main.match(fn) and (i["st"] > 0 or i["ld"] > 0):
            bad.append(f"{arch} {fn}: {i['st']} bytes spill stores, {i['ld']} bytes spill loads")
        if i["stack"] > planned_local:
            bad.append(f"{arch} {fn}: {i['stack']} bytes of stack, above the {planned_local} the CUDA backend accepts at load time")
print(f"{'arch':6} {'kernel':28} {'regs':>5} {'smem B':>7} {'stack B':>7} {'spill st':>8} {'spill ld':>8}")
for arch, fn, i in rows:
    print(f"{arch:6} {fn:28} {i['regs']:5} {i['smem']:7} {i['stack']:7} {i['st']:8} {i['ld']:8}")
# The wgmma kernels exist only in the sm_90a build; elsewhere they trap.
# ptxas reports when it has to serialise them (C7515, C7520: accumulators
# touched or fences needed in divergent code while products are in flight).
for arch in arches:
    for line in open(f"{out}/ptxas_{arch}.log"):
        if "Potential Performance Loss: wgmma" in line:
            bad.append(f"{arch}: {line.strip()}")
    ptx = open(f"{out}/adaface_{arch}.ptx").read()
    n = ptx.count("wgmma.mma_async")
    print(f"{arch}: {n} wgmma.mma_async, {ptx.count('mma.sync')} mma.sync in the PTX")
    if (n > 0) != arch.endswith("a"):
        bad.append(f"{arch}: {n} wgmma.mma_async instructions in the PTX")
if bad:
    print("FAIL:", *bad, sep="\n  ")
    sys.exit(1)
print(f"OK: {len(rows)} kernel variants, no spills")
PY

for arch in $ARCHES; do
    case "$arch" in
    *a) python3 scripts/ptx_guards.py "$OUT/adaface_$arch.ptx" --self-test ;;
    esac
done

# The self-test kernels the GPU cross-check (tests/sim_gpu_crosscheck.rs)
# compiles on the device machine: compiled here with the same NVRTC for
# sm_80 and sm_90a, so that a source only the host compiler accepts fails
# now rather than on the GPU machine. (The candle feature set is the one the
# README's test command has just built.)
cargo test --quiet --features candle --test sim_gpu_crosscheck selftest_kernels_compile_with_nvrtc -- --ignored
