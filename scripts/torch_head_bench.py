#!/usr/bin/env python3
"""Times the official AdaFace head (PyTorch) for one training step, on the
CPU or a CUDA GPU: the peer of `cargo run --release --example bench`.

The head is NOT part of this repository: pass the path of the official
`head.py` (github mk-minchul/AdaFace). The step is what the official training
loop does: feature norms and normalisation (the backbone's last lines), the
head, the cross-entropy loss, and the backward to the raw features and the
raw class weights.

    python scripts/torch_head_bench.py /path/to/head.py \\
        --batch 128 --dim 512 --classes 10000 [--device cpu|cuda] \\
        [--modes f32,autocast_bf16,upcast_bf16] [--threads 2] [--iters N] \\
        [--warmup N] [--json]

Precision modes (the head itself is float32 code: its class weights are a
float32 Parameter and it builds float32 one-hot masks):

  f32            the head as written: float32 features and weights.
  autocast_bf16  float32 features and weights, the step under
                 torch.autocast(bfloat16): the matrix product runs in bf16,
                 the rest as autocast decides. This is how the official
                 recipe runs mixed precision (`--use_16bit` is PyTorch
                 Lightning's precision=16, i.e. autocast with float16), with
                 bf16 in place of f16 to match our bf16 kernels.
  autocast_f16   the same with float16, the official recipe's own dtype
                 (its GradScaler only multiplies the loss; left out).
  upcast_bf16    features and weights stored in bf16, as our kernels read
                 them (weights in the head's D x C layout), converted with
                 .float() at the step's entry and run
                 through the float32 head; gradients flow back to the bf16
                 leaves (so they are bf16).

Default modes: f32 on the CPU; f32,autocast_bf16,upcast_bf16 on CUDA.
JSON keys as the Rust bench tool's (`path`, `device`, `dtype`, `batch`,
`dim`, `classes`, `median_ms`, `tflops`, `peak_extra_mb`) plus `mode`; the
path is `torch_official_head` for f32 and `torch_official_head_<mode>`
otherwise. A mode that fails (e.g. out of memory) prints a JSON line with an
`error` key instead, the other modes still run, and the exit status is 3.

Time: CPU, median wall time of --iters steps (default 10) after two warm-up
steps. CUDA, median of --iters steps (default 20) after --warmup steps
(default 3), each step between two CUDA events, one synchronise at the end.

Memory, excluding inputs and gradients as in the Rust tool:
  CPU: the peak resident set size (Linux VmHWM) during one step above the
  resident size just before it, with the high-water mark reset through
  /proc/self/clear_refs, minus the gradients the step returns; reported for
  the first step and as the maximum over three later steps (peak_extra_mb).
  CUDA: torch.cuda.max_memory_allocated() during one step (after
  reset_peak_memory_stats, gradients set to None) minus the allocated bytes
  before it (inputs, weights, buffers) minus the gradients' bytes. It counts
  the caching allocator's live tensors, not its cached free blocks.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

MODES = ("f32", "autocast_bf16", "autocast_f16", "upcast_bf16")


def load_head_module(path):
    spec = importlib.util.spec_from_file_location("official_adaface_head", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_head(module, a, dev):
    import torch

    # The head prints its settings; keep stdout for our results.
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        try:
            # Build the weights on the device (torch >= 2.0): a million
            # classes initialised on the host would take seconds.
            with torch.device(dev):
                head = module.AdaFace(
                    embedding_size=a.dim, classnum=a.classes, m=0.4, h=0.333, s=64.0, t_alpha=0.01
                )
        except (AttributeError, TypeError):
            head = module.AdaFace(
                embedding_size=a.dim, classnum=a.classes, m=0.4, h=0.333, s=64.0, t_alpha=0.01
            ).to(dev)
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    head.train()
    return head


def make_step(module, a, dev, mode):
    """Returns (step, leaves): step() runs one training step with the
    gradients of the leaves (features, weights) set to None first."""
    import torch

    torch.manual_seed(0)
    head = build_head(module, a, dev)
    criterion = torch.nn.CrossEntropyLoss()
    labels = ((torch.arange(a.batch, dtype=torch.int64) * 7919) % a.classes).to(dev)
    x32 = 3.0 * torch.randn(a.batch, a.dim, dtype=torch.float32, device=dev)

    def head_loss(x):
        norms = torch.norm(x, 2, 1, True)
        embeddings = torch.div(x, norms)
        logits = head(embeddings, norms, labels)
        return criterion(logits, labels)

    if mode == "upcast_bf16":
        x = x32.to(torch.bfloat16).requires_grad_(True)
        w = head.kernel.detach().to(torch.bfloat16).requires_grad_(True)
        del head.kernel  # from now on a plain attribute, set per step

        def step():
            x.grad = None
            w.grad = None
            head.kernel = w.float()
            loss = head_loss(x.float())
            loss.backward()
            return loss

        return step, (x, w)

    x = x32.requires_grad_(True)
    w = head.kernel
    amp = {"autocast_bf16": torch.bfloat16, "autocast_f16": torch.float16}.get(mode)

    def step():
        x.grad = None
        w.grad = None
        if amp is None:
            loss = head_loss(x)
        else:
            with torch.autocast(device_type=dev.type, dtype=amp):
                loss = head_loss(x)
        loss.backward()
        return loss

    return step, (x, w)


def grad_bytes(leaves):
    return sum(t.numel() * t.element_size() for t in leaves)


def time_cpu(step, leaves, a):
    grads_kb = grad_bytes(leaves) / 1024

    def measured_step():
        for t in leaves:
            t.grad = None
        before = status_kb("VmRSS")
        reset_peak_rss()
        step()
        return max(0.0, status_kb("VmHWM") - before - grads_kb) / 1024 * 1.048576  # MB

    first_mb = measured_step()
    step()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    steady_mb = max(measured_step() for _ in range(3))
    return statistics.median(times), steady_mb, {"first_step_extra_mb": round(first_mb, 3)}


def time_cuda(step, leaves, a):
    import torch

    for _ in range(a.warmup):
        step()
    events = []
    for _ in range(a.iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in events]
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    extra_mb = max(0, peak - before - grad_bytes(leaves)) / 1e6
    extra = {
        "warmup": a.warmup,
        "min_ms": round(min(times), 4),
        "gpu": torch.cuda.get_device_name(),
        # PyTorch's default (False): f32 products are true f32, not TF32.
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    return statistics.median(times), extra_mb, extra


def run_mode(module, a, dev, mode):
    import torch

    step, leaves = make_step(module, a, dev, mode)
    if dev.type == "cuda":
        median, extra_mb, extra = time_cuda(step, leaves, a)
    else:
        median, extra_mb, extra = time_cpu(step, leaves, a)
    flops = 8.0 * a.batch * a.dim * a.classes
    out = {
        "path": "torch_official_head" if mode == "f32" else f"torch_official_head_{mode}",
        "device": dev.type,
        "dtype": {"f32": "f32", "autocast_f16": "f16"}.get(mode, "bf16"),
        "batch": a.batch,
        "dim": a.dim,
        "classes": a.classes,
        "median_ms": round(median, 4),
        "tflops": round(flops / (median * 1e-3) / 1e12, 5),
        "peak_extra_mb": round(extra_mb, 3),
        "mode": mode,
        "iters": a.iters,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    out.update(extra)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("head_py", help="path to the official head.py")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--modes", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--iters", type=int, help="timed steps (default 10 on the CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    import torch

    dev = torch.device(a.device)
    modes = (a.modes or ("f32,autocast_bf16,upcast_bf16" if dev.type == "cuda" else "f32")).split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}: choose from {', '.join(MODES)}")

    def error_row(mode, message):
        return {
            "path": "torch_official_head" if mode == "f32" else f"torch_official_head_{mode}",
            "device": dev.type,
            "mode": mode,
            "batch": a.batch,
            "dim": a.dim,
            "classes": a.classes,
            "error": message,
        }

    if dev.type == "cuda" and not torch.cuda.is_available():
        for mode in modes:
            print(json.dumps(error_row(mode, "no CUDA device visible to torch")))
        return 3
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if a.iters is None:
        a.iters = 20 if dev.type == "cuda" else 10
    torch.set_num_threads(a.threads)
    module = load_head_module(a.head_py)

    status = 0
    for mode in modes:
        try:
            out = run_mode(module, a, dev, mode)
        except (RuntimeError, MemoryError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
            status = 3
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            out = error_row(mode, f"{type(e).__name__}: {msg}")
        finally:
            if dev.type == "cuda":
                import gc

                gc.collect()
                torch.cuda.empty_cache()
        if a.json:
            print(json.dumps(out), flush=True)
        elif "error" in out:
            print(f"{out['path']} B={a.batch} D={a.dim} C={a.classes}: {out['error']}", flush=True)
        else:
            print(
                f"{out['path']} ({mode}) torch {torch.__version__} {dev.type} B={a.batch} D={a.dim} "
                f"C={a.classes}: median {out['median_ms']:.3f} ms, {out['tflops']:.4f} TFLOP/s (8BDC), "
                f"peak extra {out['peak_extra_mb']:.1f} MB",
                flush=True,
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
