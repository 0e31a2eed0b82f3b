#!/usr/bin/env python3
"""Times the official AdaFace head (PyTorch, CPU, float32) for one training
step, the peer of `cargo run --release --example bench -- --device cpu`.

The head is NOT part of this repository: pass the path of the official
`head.py` (github mk-minchul/AdaFace). The step is what the official training
loop does: feature norms and normalisation (the backbone's last lines), the
head, the cross-entropy loss, and the backward to the raw features and the
raw class weights.

    python scripts/torch_head_bench.py /path/to/head.py \
        --batch 128 --dim 512 --classes 10000 [--threads 2] [--iters 10] [--json]

Time: median wall time of --iters steps after two warm-up steps.

Memory: the peak resident set size (Linux VmHWM) during one step above the
resident size just before it, with the high-water mark reset through
/proc/self/clear_refs before the step, minus the gradients the step returns
(B*D + C*D floats), so inputs and gradients are excluded as in the Rust tool.
Reported for the first step (includes one-off allocations of the step) and
as the maximum over the later steps (steady state).
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time


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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("head_py", help="path to the official head.py")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    module = load_head_module(a.head_py)
    # The head prints its settings; keep stdout for our results.
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    head = module.AdaFace(embedding_size=a.dim, classnum=a.classes, m=0.4, h=0.333, s=64.0, t_alpha=0.01)
    sys.stdout.close()
    sys.stdout = stdout
    head.train()
    criterion = torch.nn.CrossEntropyLoss()
    x = (3.0 * torch.randn(a.batch, a.dim, dtype=torch.float32)).requires_grad_(True)
    labels = (torch.arange(a.batch, dtype=torch.int64) * 7919) % a.classes

    def step():
        x.grad = None
        head.kernel.grad = None
        norms = torch.norm(x, 2, 1, True)
        embeddings = torch.div(x, norms)
        logits = head(embeddings, norms, labels)
        loss = criterion(logits, labels)
        loss.backward()
        return loss

    grads_kb = (a.batch * a.dim + a.classes * a.dim) * 4 / 1024

    def measured_step():
        x.grad = None
        head.kernel.grad = None
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
    median = statistics.median(times)
    flops = 8.0 * a.batch * a.dim * a.classes
    out = {
        "path": "torch_official_head",
        "device": "cpu",
        "dtype": "f32",
        "batch": a.batch,
        "dim": a.dim,
        "classes": a.classes,
        "median_ms": round(median, 4),
        "tflops": round(flops / (median * 1e-3) / 1e12, 5),
        "peak_extra_mb": round(steady_mb, 3),
        "first_step_extra_mb": round(first_mb, 3),
        "threads": a.threads,
        "torch": torch.__version__,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(
            f"torch {torch.__version__} threads {a.threads} B={a.batch} D={a.dim} C={a.classes}: "
            f"median {median:.3f} ms, {out['tflops']:.4f} TFLOP/s (8BDC), "
            f"peak extra RSS {steady_mb:.1f} MB steady, {first_mb:.1f} MB first step"
        )


if __name__ == "__main__":
    main()
