#!/usr/bin/env python3
"""One training step of the AdaFace loss, side by side in one run:

  adaface_rs      adaface_rs.AdaFaceLoss (fused: the B x C logits never exist)
  torch_plain     the same loss written in plain PyTorch, materialising B x C
                  (cosines, logits, softmax) as the official head does
  official_head   the official head (github mk-minchul/AdaFace head.py) when
                  $ADAFACE_OFFICIAL_HEAD names a copy of it

    python python/bench.py --batch 128 --dim 512 --classes 10000 --device cpu

A step is forward and backward to the raw features and the class weight
(the official head gets (x / ||x||, ||x||) computed from x with autograd, as
its backbone does). Prints per implementation the median step time and the
peak extra memory of a step, and the ratios against torch_plain; for
adaface_rs on the CPU also the time of the bare native call (the Rust step)
and the Python layer's share of the step.

Time: median wall time of --iters steps after --warmup (CPU), or between CUDA
events (CUDA). Memory, beyond the inputs and the gradients the step returns:
CPU, the peak resident set size (VmHWM, reset through /proc/self/clear_refs)
during a step above the size just before it, maximum over three steps,
measured in a child process with MALLOC_MMAP_THRESHOLD_ fixed so that large
buffers are mapped and unmapped per step and show in the peak rather than
being served from memory already resident (the timing runs in this process,
with the allocator's defaults). CUDA, torch's
peak allocated memory during a step above the allocation before it, plus for
adaface_rs the device memory its kernels' workspace takes outside torch's
allocator (the drop in free device memory over its first step).
Threads: --threads for torch and for the Rust thread pool (RAYON_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10000)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true", help="also print one JSON line per implementation")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


ARGS = parse()
if "RAYON_NUM_THREADS" not in os.environ:
    # The Rust thread pool reads it once, at its first use: re-execute with it.
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, RAYON_NUM_THREADS=str(ARGS.threads)))
os.environ.setdefault("RAYON_NUM_THREADS", str(ARGS.threads))
# The installed package, not the source folder this script sits in.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import adaface_rs  # noqa: E402
from adaface_rs import _native  # noqa: E402


class PlainAdaFace(torch.nn.Module):
    """The AdaFace loss in plain PyTorch: materialises the B x C cosines and
    logits and lets autograd do the backward."""

    def __init__(self, d: int, c: int, m=0.4, h=0.333, s=64.0, t_alpha=0.01, dtype=torch.float32):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(c, d, dtype=dtype))
        self.m, self.h, self.s, self.t_alpha, self.eps = m, h, s, t_alpha, 1e-3
        self.register_buffer("batch_mean", torch.tensor([20.0]))
        self.register_buffer("batch_std", torch.tensor([100.0]))

    def forward(self, x, y):
        norms = x.norm(dim=1, keepdim=True)
        cos = (x / norms) @ F.normalize(self.weight, dim=1).t()
        cos = cos.clamp(-1 + self.eps, 1 - self.eps)
        with torch.no_grad():
            clipped = norms.clamp(0.001, 100).float()
            mean, std = clipped.mean(), clipped.std()
            self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
            self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
            z = ((clipped - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1, 1)
        target = cos.gather(1, y[:, None])
        theta = torch.acos(target) - self.m * z
        theta = theta.clamp(self.eps, math.pi - self.eps)
        target_m = torch.cos(theta) - (self.m + self.m * z)
        logits = cos.scatter(1, y[:, None], target_m.to(cos.dtype)) * self.s
        return F.cross_entropy(logits.float(), y)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_peak_extra_mb(prepare, run, returned_bytes: int) -> float:
    """Peak RSS of ``run()`` above the RSS after ``prepare()`` (which frees
    the previous step's gradients and makes the inputs), less the gradients
    the step returns; the maximum over three steps."""
    worst = 0.0
    for _ in range(3):
        args = prepare()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return float("nan")
        before = rss_kib("VmRSS")
        run(*args)
        extra = (rss_kib("VmHWM") - before) * 1024 - returned_bytes
        worst = max(worst, extra / 2**20)
    return worst


def timed_round_robin(steps, sync=None):
    """Median milliseconds of each step's ``run(*prepare())``, only ``run``
    timed (the harness's input clone and ``zero_grad`` are not the loss's
    cost), the steps interleaved iteration by iteration so that a busy
    machine slows them alike."""
    for prepare, run in steps.values():
        for _ in range(ARGS.warmup):
            run(*prepare())
    times = {name: [] for name in steps}
    for _ in range(ARGS.iters):
        for name, (prepare, run) in steps.items():
            args = prepare()
            if sync is None:
                t0 = time.perf_counter()
                run(*args)
                times[name].append((time.perf_counter() - t0) * 1e3)
            else:
                sync()
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run(*args)
                b.record()
                sync()
                times[name].append(a.elapsed_time(b))
    return {name: statistics.median(v) for name, v in times.items()}


def python_layer_us(dtype) -> float:
    """The Python layer's own cost per step, in microseconds: a module step
    (forward and backward through autograd) minus the bare native call, at a
    shape so small that the Rust work is negligible; medians of 400."""
    b, d, c = 3, 4, 5
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(b, d, generator=g).to(dtype) * 3
    y = torch.tensor([0, 4, 2])
    head = adaface_rs.AdaFaceLoss(d, c, dtype=dtype)
    mean = torch.tensor([20.0], dtype=torch.float64)
    std = torch.tensor([100.0], dtype=torch.float64)
    wt = head.weight.detach()
    x = x0.clone().requires_grad_()

    def module_step():
        x.grad = None
        head.weight.grad = None
        head(x, y).backward()

    def native():
        gx = torch.empty(b, d)
        gw = torch.empty(c, d)
        _native.cpu_step(head._cfg, b, d, c, ARGS.dtype, "int64", x0.data_ptr(), wt.data_ptr(),
                         y.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)

    def clear_only():
        x.grad = None
        head.weight.grad = None

    t = {"m": [], "n": [], "c": []}
    for i in range(420):
        for k, f in (("m", module_step), ("n", native), ("c", clear_only)):
            t0 = time.perf_counter()
            f()
            if i >= 20:
                t[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    return (med["m"] - med["c"] - med["n"]) * 1e6


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    dev = torch.device(ARGS.device)
    dtype = getattr(torch, ARGS.dtype)
    b, d, c = ARGS.batch, ARGS.dim, ARGS.classes
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(b, d, generator=g) * torch.empty(b, 1).uniform_(5, 40, generator=g)).to(dtype).to(dev)
    y = torch.randint(0, c, (b,), generator=g).to(dev)
    w0 = (torch.randn(c, d, generator=g) * 0.05).to(dtype)
    grad_bytes = (b * d + c * d) * torch.tensor([], dtype=dtype).element_size()

    impls = {}
    ours = adaface_rs.AdaFaceLoss(d, c, dtype=dtype).to(dev)
    plain = PlainAdaFace(d, c, dtype=dtype).to(dev)
    with torch.no_grad():
        ours.weight.copy_(w0)
        plain.weight.copy_(w0)
    impls["adaface_rs"] = ours
    impls["torch_plain"] = plain
    official = None
    head_path = os.environ.get("ADAFACE_OFFICIAL_HEAD")
    if head_path:
        spec = importlib.util.spec_from_file_location("official_adaface_head", head_path)
        mod = importlib.util.module_from_spec(spec)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the head prints its settings
            spec.loader.exec_module(mod)
            official = mod.AdaFace(embedding_size=d, classnum=c, t_alpha=0.01).to(dev)
        with torch.no_grad():
            official.kernel.copy_(w0.float().t())
        impls["official_head"] = official

    def make_prepare(head):
        def prepare():
            head.zero_grad(set_to_none=True)
            return (x0.clone().requires_grad_(),)

        return prepare

    def make_run(name, head):
        def run(x):
            if name == "official_head":
                xf = x.float()
                n = torch.norm(xf, 2, 1, True)
                loss = F.cross_entropy(head(xf / n, n, y), y)
            else:
                loss = head(x, y)
            loss.backward()
            return loss

        return run

    steps = {}
    for name, head in impls.items():
        steps[name] = (make_prepare(head), make_run(name, head))

    if dev.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16):
        # The bare Rust step: the native call alone, on inputs and fresh
        # gradient buffers prepared as the module prepares them.
        xs = x0.contiguous()
        mean = torch.tensor([20.0], dtype=torch.float64)
        std = torch.tensor([100.0], dtype=torch.float64)
        wt = ours.weight.detach()

        def native():
            gx = torch.empty(b, d)
            gw = torch.empty(c, d)
            _native.cpu_step(ours._cfg, b, d, c, ARGS.dtype, "int64", xs.data_ptr(), wt.data_ptr(),
                             y.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)

        steps["native"] = (lambda: (), native)

    rows = []
    if dev.type == "cpu" and ARGS.memory_child:
        for name, head in impls.items():
            make_run(name, head)(*make_prepare(head)())
            mem = cpu_peak_extra_mb(make_prepare(head), make_run(name, head), grad_bytes)
            print(json.dumps({"path": name, "peak_extra_mb": max(mem, 0.0)}))
        return
    if dev.type == "cpu":
        medians = timed_round_robin(steps)
        import subprocess

        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--memory-child"],
            env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"),
            capture_output=True, text=True, check=True,
        )
        mems = {}
        for line in child.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                mems[r["path"]] = r["peak_extra_mb"]
        for name in impls:
            rows.append({"path": name, "median_ms": medians[name], "peak_extra_mb": mems[name]})
    else:
        outside = {}
        for name, (prepare, run) in steps.items():
            free0 = torch.cuda.mem_get_info(dev)[0]
            run(*prepare())
            torch.cuda.synchronize()
            # Device memory taken outside torch's allocator (the crate's
            # workspace, kept between steps).
            outside[name] = max(0, free0 - torch.cuda.mem_get_info(dev)[0]) / 2**20 if name == "adaface_rs" else 0.0
        medians = timed_round_robin(steps, sync=torch.cuda.synchronize)
        for name, head in impls.items():
            args = make_prepare(head)()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            make_run(name, head)(*args)
            torch.cuda.synchronize()
            mem = (torch.cuda.max_memory_allocated(dev) - base - grad_bytes) / 2**20 + outside[name]
            rows.append({"path": name, "median_ms": medians[name], "peak_extra_mb": max(mem, 0.0)})
    native_ms = medians.get("native")
    layer_us = python_layer_us(dtype) if native_ms is not None else None

    plain_row = rows[1]
    print(f"AdaFace step, B={b} D={d} C={c} {ARGS.dtype} on {ARGS.device}, "
          f"{ARGS.threads} threads, torch {torch.__version__}, median of {ARGS.iters}")
    print(f"{'implementation':<16} {'median ms':>10} {'peak extra MiB':>15} {'speed-up':>9} {'memory ratio':>13}")
    for r in rows:
        speed = plain_row["median_ms"] / r["median_ms"]
        ratio = r["peak_extra_mb"] / plain_row["peak_extra_mb"] if plain_row["peak_extra_mb"] > 0 else float("nan")
        print(f"{r['path']:<16} {r['median_ms']:>10.2f} {r['peak_extra_mb']:>15.2f} {speed:>8.2f}x {ratio:>13.4f}")
    if native_ms is not None:
        overhead = (rows[0]["median_ms"] - native_ms) / native_ms * 100
        print(f"native Rust step (no Python layer): {native_ms:.2f} ms; module step minus it: {overhead:+.1f} % "
              "(with this machine's noise)")
        share = layer_us / 1e3 / native_ms * 100
        print(f"Python layer per step (module step minus native call, forward + backward, at B=3 D=4 C=5): "
              f"{layer_us:.1f} us = {share:.3f} % of the Rust step here")
        rows[0]["native_ms"] = native_ms
        rows[0]["python_overhead_pct"] = overhead
        rows[0]["python_layer_us"] = layer_us
    if not head_path:
        print("official_head: not run (set ADAFACE_OFFICIAL_HEAD to the official head.py)")
    if ARGS.json:
        for r in rows:
            print(json.dumps(dict(r, batch=b, dim=d, classes=c, device=ARGS.device, dtype=ARGS.dtype)))


if __name__ == "__main__":
    main()
