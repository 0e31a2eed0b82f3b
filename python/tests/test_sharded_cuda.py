"""ShardedAdaFaceLoss on CUDA tensors: the native CUDA shard (the crate's
ShardedCudaAdaFace on torch's stream) driven in process for K = 1..3 shards
on one GPU, the module over a world of 1 (gloo and NCCL) on one GPU, and
over NCCL with 2 processes where 2 GPUs are visible; each compared with the
unsharded CUDA AdaFaceLoss and with the CPU path. Skipped, with the reason
shown, where no GPU is visible."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist

import adaface_rs
from adaface_rs import _native

import _dist_worker as W
from conftest import random_inputs, rel

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch: sharded CUDA tests skipped"),
    pytest.mark.skipif(not adaface_rs.cuda_compiled(), reason="adaface_rs built without the CUDA backend"),
]

needs_nccl = pytest.mark.skipif(
    not (dist.is_available() and dist.is_nccl_available()), reason="torch built without NCCL: NCCL tests skipped"
)

_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _spawn(which: str, world: int) -> List[Dict[str, Any]]:
    from test_sharded import _spawn as spawn

    return spawn(which, world)


# -- the native CUDA shard, K shards in this process -------------------------


class _Shards:
    """K native CUDA shards of one global weight on the current device and
    stream, reduced with torch between the phases as torch.distributed would
    (MAX of the maxima, SUM of the rescaled sums and of dX)."""

    def __init__(self, cfg: Any, splits: List[int], c: int):
        dev = torch.cuda.current_device()
        stream = int(torch.cuda.current_stream().cuda_stream)
        self.splits = splits
        self.offsets = [sum(splits[:k]) for k in range(len(splits))]
        self.heads = [_native.CudaShardHead(cfg, dev, stream, o, k, c) for o, k in zip(self.offsets, splits)]

    def step(self, x, w, y, mean, std, update=True):
        b, d = x.shape
        name = _NAMES[x.dtype]
        ws = [w[o : o + k].contiguous() for o, k in zip(self.offsets, self.splits)]
        parts, losses = [], []
        for h, wk in zip(self.heads, ws):
            p = torch.empty((5, b), dtype=torch.float32, device="cuda")
            loss = torch.empty((1,), dtype=torch.float64, device="cuda")
            h.phase1(b, d, name, "int64", x.data_ptr(), wk.data_ptr(), y.data_ptr(),
                     mean.data_ptr(), std.data_ptr(), p.data_ptr(), loss.data_ptr())
            parts.append(p)
            losses.append(loss)
        gmax = torch.stack([p[0] for p in parts]).amax(0).contiguous()
        sums = []
        for h in self.heads:
            s = torch.empty(4 * b, dtype=torch.float32, device="cuda")
            h.sums_for(gmax.data_ptr(), s.data_ptr())
            sums.append(s)
        total = torch.stack(sums).sum(0).contiguous()
        dxs, dws = [], []
        for h, wk in zip(self.heads, ws):
            dx = torch.zeros((b, d), dtype=torch.float32, device="cuda")
            dw = torch.zeros(wk.shape, dtype=torch.float32, device="cuda")
            h.phase2(wk.data_ptr(), gmax.data_ptr(), total.data_ptr(), dx.data_ptr(), dw.data_ptr(),
                     mean.data_ptr(), std.data_ptr(), update)
            dxs.append(dx)
            dws.append(dw)
        for l in losses[1:]:
            assert torch.equal(l, losses[0]), "every shard computes the same loss"
        return {
            "loss": float(losses[0]),
            "gx": torch.stack(dxs).sum(0).cpu(),
            "gw": torch.cat(dws).cpu(),
            "partials": [p.cpu() for p in parts],
            "checked": [h.check_last_step() for h in self.heads],
        }


@pytest.mark.parametrize("splits", [[1031], [600, 431], [1, 700, 330]], ids=["k1", "k2", "k3"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-4)])
def test_native_cuda_shards_equal_unsharded(splits, dtype, tol):
    """K native CUDA shards (uneven, a one-class shard, labels at the
    boundaries), three steps with the EMA state carried in torch CUDA
    buffers, against the unsharded CUDA AdaFaceLoss (same dtype) and the
    exact CPU reference; the row statistics against the CPU native shard."""
    b, d, c = 37, 64, 1031
    cfg = _native.Config("adaface", 0.4, 0.333, 64.0, 0.3)
    shards = _Shards(cfg, splits, c)
    gpu = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.3, dtype=dtype).cuda()
    ref = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.3, dtype=torch.float64, backend="reference")
    mean0, std0 = cfg.initial_state()
    mean = torch.full((1,), mean0, dtype=torch.float64, device="cuda")
    std = torch.full((1,), std0, dtype=torch.float64, device="cuda")
    edges = [0, c - 1] + [v for o in shards.offsets[1:] for v in (o - 1, o)]
    for step in range(3):
        x, w, y = random_inputs(b, d, c, seed=60 + step)
        y[: len(edges)] = torch.tensor(edges)
        x, w = x.to(dtype), w.to(dtype)
        with torch.no_grad():
            gpu.weight.copy_(w.cuda())
            ref.weight.copy_(w.double())
        got = shards.step(x.cuda().contiguous(), w.cuda().contiguous(), y.cuda(), mean, std)
        xg = x.cuda().requires_grad_()
        gpu.weight.grad = None
        lg = gpu(xg, y.cuda())
        lg.backward()
        xr = x.double().requires_grad_()
        ref.weight.grad = None
        lr = ref(xr, y)
        lr.backward()
        assert abs(got["loss"] - float(lg)) <= tol * abs(float(lg)), (step, got["loss"], float(lg))
        assert rel(got["gx"], xg.grad.float().cpu()) <= 10 * tol
        assert rel(got["gw"], gpu.weight.grad.float().cpu()) <= 10 * tol
        state = (float(mean), float(std))
        assert state == pytest.approx(gpu.ema_state(), rel=1e-6)
        cpu_tol = 1e-4 if dtype == torch.float32 else 2e-2
        assert abs(got["loss"] - float(lr)) <= cpu_tol * abs(float(lr))
        assert rel(got["gx"], xr.grad) <= 10 * cpu_tol
        assert rel(got["gw"], ref.weight.grad) <= 10 * cpu_tol
        assert all(v == pytest.approx(got["loss"], rel=1e-6) for v in got["checked"])
        if step == 0:
            # The row statistics of each shard against the CPU native shard.
            m_cpu = torch.full((1,), mean0, dtype=torch.float64)
            s_cpu = torch.full((1,), std0, dtype=torch.float64)
            for o, k, p in zip(shards.offsets, splits, got["partials"]):
                xc, wc, yc = x.contiguous(), w[o : o + k].contiguous(), y.contiguous()
                pc = torch.empty((5, b), dtype=torch.float32)
                _native.shard_phase1(cfg, "cpu", o, k, c, b, d, _NAMES[dtype], "int64", xc.data_ptr(),
                                     wc.data_ptr(), yc.data_ptr(), m_cpu.data_ptr(), s_cpu.data_ptr(),
                                     None, 0, 0, pc.data_ptr())
                assert torch.equal(p[4], pc[4]), "the same rows own their label"
                assert rel(p[:4], pc[:4]) <= 1e-4


def test_native_cuda_shard_errors_write_nothing():
    """Argument errors raise ValueError/RuntimeError before anything is
    queued: the partials, the gradients and the state stay as they were."""
    b, d, c = 8, 16, 20
    cfg = _native.Config("adaface", 0.4, 0.333, 64.0, 0.3)
    dev = torch.cuda.current_device()
    stream = int(torch.cuda.current_stream().cuda_stream)
    with pytest.raises(ValueError):
        _native.CudaShardHead(cfg, dev, stream, 15, 10, c)  # past the classes
    # One shard holding every class (a row labelled outside every shard
    # would fail the device's one-owner check).
    h = _native.CudaShardHead(cfg, dev, stream, 0, c, c)
    x, w, y = random_inputs(b, d, c, seed=70)
    x, w, y = x.float().cuda(), w.float().cuda().contiguous(), y.cuda()
    mean = torch.full((1,), 20.0, dtype=torch.float64, device="cuda")
    std = torch.full((1,), 100.0, dtype=torch.float64, device="cuda")
    p = torch.full((5, b), 7.0, device="cuda")
    loss = torch.full((1,), 7.0, dtype=torch.float64, device="cuda")
    args = (x.data_ptr(), w.data_ptr(), y.data_ptr(), mean.data_ptr(), std.data_ptr(), p.data_ptr(), loss.data_ptr())
    with pytest.raises(ValueError, match="float64"):
        h.phase1(b, d, "float64", "int64", *args)
    with pytest.raises(ValueError, match="labels"):
        h.phase1(b, d, "float32", "uint8", *args)
    with pytest.raises(RuntimeError, match="null"):
        h.phase1(b, d, "float32", "int64", 0, *args[1:])
    with pytest.raises(RuntimeError, match="no pending"):
        h.sums_for(p.data_ptr(), p.data_ptr())
    torch.cuda.synchronize()
    assert bool((p == 7.0).all()) and float(loss) == 7.0
    assert (float(mean), float(std)) == (20.0, 100.0)
    h.phase1(b, d, "float32", "int64", *args)
    gmax = p[0].clone()
    sums = torch.empty(4 * b, device="cuda")
    h.sums_for(gmax.data_ptr(), sums.data_ptr())
    dx = torch.zeros((b, d), device="cuda")
    dw = torch.zeros((c, d), device="cuda")
    other = w.clone()
    with pytest.raises(ValueError, match="weight phase 1 saw"):
        h.phase2(other.data_ptr(), gmax.data_ptr(), sums.data_ptr(), dx.data_ptr(), dw.data_ptr(),
                 mean.data_ptr(), std.data_ptr(), True)
    with pytest.raises(ValueError, match="both"):
        h.phase2(w.data_ptr(), gmax.data_ptr(), sums.data_ptr(), dx.data_ptr(), 0,
                 mean.data_ptr(), std.data_ptr(), True)
    torch.cuda.synchronize()
    assert not dx.any() and not dw.any() and (float(mean), float(std)) == (20.0, 100.0)
    # The step is still pending after a refused finish: the loss only.
    h.phase2(w.data_ptr(), gmax.data_ptr(), sums.data_ptr(), 0, 0, mean.data_ptr(), std.data_ptr(), False)
    assert h.check_last_step() == pytest.approx(float(loss))
    assert (float(mean), float(std)) == (20.0, 100.0)


# -- the module over torch.distributed ----------------------------------------


def _unsharded_cuda(c, splits, sizes, mode, dtype, steps):
    """The unsharded CUDA AdaFaceLoss on the workers' global batches."""
    ref = adaface_rs.AdaFaceLoss(W.D, c, t_alpha=0.3, dtype=dtype).cuda()
    with torch.no_grad():
        ref.weight.copy_(W.global_weight(c).to(dtype).cuda())
    out = []
    for step in range(steps):
        x, y = W.global_batch(step, c, splits, sum(sizes), mode)
        x = x.to(dtype).cuda().requires_grad_()
        ref.weight.grad = None
        loss = ref(x, y.cuda())
        loss.backward()
        out.append({"loss": float(loss), "gx": x.grad.cpu(), "gw": ref.weight.grad.cpu(), "state": ref.ema_state()})
    return out


def _check_cuda_runs(ranks, case, key, cpu_key=None, tol=1e-5):
    c, splits, sizes, mode = case
    dtype = torch.float32 if "float32" in key else torch.bfloat16
    want = _unsharded_cuda(c, splits, sizes, mode, dtype, W.STEPS)
    for step in range(W.STEPS):
        got = [r[key][step] for r in ranks]
        for g in got:
            assert g["loss_device"].startswith("cuda")
            assert g["loss"] == got[0]["loss"] and g["state"] == got[0]["state"]
            assert g["checked"] == pytest.approx(g["loss"], rel=1e-6)
        w = want[step]
        assert abs(got[0]["loss"] - w["loss"]) <= tol * abs(w["loss"]), (step, got[0]["loss"], w["loss"])
        gx = torch.cat([g["gx"] for g in got])
        gw = torch.cat([g["gw"] for g in got])
        assert gx.dtype == dtype and gw.dtype == dtype
        assert rel(gx, w["gx"]) <= 10 * tol and rel(gw, w["gw"]) <= 10 * tol
        assert got[0]["state"] == pytest.approx(w["state"], rel=1e-6)
        if cpu_key is not None:
            cpu = ranks[0][cpu_key][step]
            ctol = 1e-4 if dtype == torch.float32 else 2e-2
            assert abs(got[0]["loss"] - cpu["loss"]) <= ctol * abs(cpu["loss"])
            assert rel(got[0]["gx"], cpu["gx"]) <= 10 * ctol and rel(got[0]["gw"], cpu["gw"]) <= 10 * ctol
            assert got[0]["state"] == pytest.approx(cpu["state"], rel=1e-4)


def test_cuda_module_k1_gloo():
    """World 1 over gloo with CUDA tensors: equals the unsharded CUDA loss
    and the module's own CPU path on the same data."""
    ranks = _spawn("cuda_gloo1", 1)
    for dtype in ("torch.float32", "torch.bfloat16"):
        _check_cuda_runs(ranks, W.CUDA_CASES[1], f"cuda/{dtype}", f"cpu/{dtype}")


@pytest.fixture(scope="module")
def nccl1() -> List[Dict[str, Any]]:
    return _spawn("nccl1", 1)


@needs_nccl
def test_cuda_module_k1_nccl(nccl1):
    """World 1 over NCCL: equals the unsharded CUDA loss."""
    ranks = nccl1
    for dtype in ("torch.float32", "torch.bfloat16"):
        _check_cuda_runs(ranks, W.CUDA_CASES[1], f"cuda/{dtype}")


def _check_errors(res: Dict[str, Any]) -> None:
    assert res["ok"] is not None
    assert res["label_loss_nan"] and res["label_grad_zero"] and res["label_state"]
    assert res["label_err"].startswith("ValueError"), res["label_err"]
    assert res["weight_loss_nan"] and res["weight_state"], res
    assert res["weight_err"].startswith("ValueError"), res["weight_err"]
    assert res["pfc_err"].startswith("ValueError") and "CPU tensors only" in res["pfc_err"], res["pfc_err"]
    loss, checked = res["after"]
    assert checked == pytest.approx(loss, rel=1e-6)


@needs_nccl
def test_cuda_module_errors_k1_nccl(nccl1):
    """Device-detected errors over NCCL: NaN loss, zero gradients, the state
    unchanged, check_last_step raises; Partial FC refused on CUDA."""
    _check_errors(nccl1[0]["errors"])


@needs_nccl
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 CUDA GPUs: the 2-process NCCL test skipped")
def test_cuda_module_nccl_two_processes():
    """Two processes on two GPUs over NCCL (uneven shards, labels at the
    boundary): equal to the unsharded CUDA loss; bf16 dX on the wire close;
    errors on one rank reported on every rank with no state moving."""
    ranks = _spawn("nccl2", 2)
    for dtype in ("torch.float32", "torch.bfloat16"):
        _check_cuda_runs(ranks, W.CUDA_CASES[2], f"cuda/{dtype}")
    c, splits, sizes, mode = W.CUDA_CASES[2]
    want = _unsharded_cuda(c, splits, sizes, mode, torch.float32, 1)[0]
    gx = torch.cat([r["comm/bf16"][0]["gx"] for r in ranks])
    assert rel(gx, want["gx"]) <= 1e-2
    for r in ranks:
        _check_errors(r["errors"])
