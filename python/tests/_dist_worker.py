"""The rank side of the torch.distributed tests (test_sharded.py): run in
spawned processes over gloo, they record what ShardedAdaFaceLoss returns;
the test process compares it with the unsharded AdaFaceLoss.

Not a test module (no ``test_`` prefix): spawned processes import it by name.
"""

from __future__ import annotations

import io
import os
import traceback
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

D = 8
STEPS = 3

#: Equality cases: name -> (classes, shard sizes, local batch sizes, labels).
#: K = 1..4; uneven shards, a one-class shard, labels at the shard
#: boundaries, a shard holding no label, uneven and empty local batches.
EQUALITY = {
    "k1": (13, [13], [9], "any"),
    "k2": (13, [9, 4], [6, 5], "boundary"),
    "k3": (13, [1, 7, 5], [4, 0, 7], "avoid_last"),
    "k4": (13, [4, 1, 6, 2], [3, 3, 2, 3], "boundary"),
}
#: Partial FC cases: classes, shard sizes, local batch sizes, sample rate.
PFC = (40, [12, 9, 11, 8], [3, 2, 3, 2], 0.3)


def global_weight(c: int, seed: int = 100) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, D, generator=g, dtype=torch.float64) * 0.3


def global_batch(step: int, c: int, splits: Sequence[int], b: int, mode: str, seed: int = 0):
    """Features (float64) with a spread of norms, and labels by ``mode``."""
    g = torch.Generator().manual_seed(1000 * seed + step)
    x = torch.randn(b, D, generator=g, dtype=torch.float64)
    x *= torch.empty(b, 1, dtype=torch.float64).uniform_(0.5, 40.0, generator=g)
    if mode == "avoid_last":
        y = torch.randint(0, c - splits[-1], (b,), generator=g)
    else:
        y = torch.randint(0, c, (b,), generator=g)
    if mode == "boundary":
        edges = []
        off = 0
        for k in splits[:-1]:
            off += k
            edges += [off - 1, off]
        edges += [0, c - 1]
        y[: min(b, len(edges))] = torch.tensor(edges[:b])
    return x, y


def local_rows(rank: int, sizes: Sequence[int]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _run_case(group, rank, c, splits, sizes, mode, dtype, steps=STEPS, device="cpu", **kw) -> List[Dict[str, Any]]:
    import adaface_rs

    mod = adaface_rs.ShardedAdaFaceLoss(
        D, c, group, t_alpha=0.3, dtype=dtype, class_splits=splits, device=device, **kw
    )
    mod.load_global_weight(global_weight(c).to(dtype))
    out = []
    for step in range(steps):
        x, y = global_batch(step, c, splits, sum(sizes), mode)
        xl = x[local_rows(rank, sizes)].to(dtype).to(device).clone().requires_grad_()
        mod.weight.grad = None
        loss = mod(xl, y[local_rows(rank, sizes)].to(device))
        loss.backward()
        out.append(
            {
                "loss": float(loss.detach()),
                "loss_device": str(loss.device),
                "checked": mod.check_last_step(),
                "gx": xl.grad.cpu().clone(),
                "gw": mod.weight.grad.cpu().clone(),
                "state": mod.ema_state(),
                "sample_step": int(mod.sample_step[0]),
                "sampled": None if mod.last_sampled is None else mod.last_sampled.clone(),
                "offset": mod.offset,
            }
        )
    return out


def _finite_differences(group, rank, c, splits, sizes, rate) -> Dict[str, Any]:
    """Directional finite differences of the sampled loss (float64, ArcFace:
    no scaler to hold fixed) against the analytic gradients."""
    import adaface_rs

    mod = adaface_rs.ShardedAdaFaceLoss(
        D, c, group, margin="arcface", m=0.5, s=8.0, dtype=torch.float64,
        sample_rate=rate, seed=11, class_splits=splits,
    )
    w_all = global_weight(c)
    mod.load_global_weight(w_all)
    x, y = global_batch(0, c, splits, sum(sizes), "any", seed=5)
    rows = local_rows(rank, sizes)
    xl = x[rows].clone().requires_grad_()
    loss = mod(xl, y[rows])
    loss.backward()
    sampled = mod.last_sampled.clone()
    gx, gw = xl.grad.clone(), mod.weight.grad.clone()
    w0 = mod.weight.detach().clone()
    step_after_grad = int(mod.sample_step[0])
    state_after_grad = mod.ema_state()
    mod.sample_step.zero_()  # the same draw again (no_grad does not advance)
    with torch.no_grad():
        unsampled = None
        mod.eval()
        unsampled = float(mod(x[rows], y[rows]))
        mod.train()
        again = float(mod(x[rows], y[rows]))
    eps = 1e-6
    pairs = []
    for k in range(3):
        g = torch.Generator().manual_seed(50 + k)
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        u = torch.randn(w_all.shape, generator=g, dtype=torch.float64)
        u_local = u[mod.offset : mod.offset + mod.shard_classes]
        vals = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                mod.weight.copy_(w0 + sign * eps * u_local)
                vals.append(float(mod(x[rows] + sign * eps * v[rows], y[rows])))
            mod.weight.copy_(w0)
        fd = (vals[0] - vals[1]) / (2 * eps)
        analytic_local = float((gx * v[rows]).sum() + (gw * u_local).sum())
        pairs.append((fd, analytic_local))
    return {
        "loss": float(loss.detach()),
        "again": again,
        "unsampled": unsampled,
        "pairs": pairs,
        "sampled": sampled,
        "step_after_grad": step_after_grad,
        "step_after": int(mod.sample_step[0]),
        "state_moved": state_after_grad != mod.ema_state(),
    }


def _world4(rank: int, world: int) -> Dict[str, Any]:
    # new_group is collective over the whole world, members or not.
    groups = {k: dist.new_group(ranks=list(range(k))) for k in (1, 2, 3)}
    groups[4] = None
    res: Dict[str, Any] = {}
    for name, (c, splits, sizes, mode) in EQUALITY.items():
        k = len(splits)
        if rank >= k:
            continue
        for dtype in (torch.float32, torch.float64):
            res[f"{name}/{dtype}"] = _run_case(groups[k], rank, c, splits, sizes, mode, dtype)
    c, splits, sizes, mode = EQUALITY["k4"]
    for comm in ("bf16", "fp16"):
        res[f"comm/{comm}"] = _run_case(None, rank, c, splits, sizes, mode, torch.float32, steps=1, comm_dtype=comm)
    c, splits, sizes, rate = PFC
    for dtype in (torch.float32, torch.float64):
        res[f"pfc/{dtype}"] = _run_case(None, rank, c, splits, sizes, "any", dtype, steps=2, sample_rate=rate, seed=7)
    res["pfc/again"] = _run_case(None, rank, c, splits, sizes, "any", torch.float32, steps=2, sample_rate=rate, seed=7)
    res["pfc/seed8"] = _run_case(None, rank, c, splits, sizes, "any", torch.float32, steps=1, sample_rate=rate, seed=8)
    res["fd"] = _finite_differences(None, rank, c, splits, sizes, rate)
    return res


def _expect_error(fn, *args) -> str:
    try:
        fn(*args)
    except ValueError as e:
        return "ValueError: " + str(e)
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"
    return "no error"


def _world2(rank: int, world: int) -> Dict[str, Any]:
    import adaface_rs

    res: Dict[str, Any] = {}
    c, splits, sizes = 13, [6, 7], [4, 5]
    mod = adaface_rs.ShardedAdaFaceLoss(D, c, t_alpha=0.3, class_splits=splits, sample_rate=0.5, seed=3)
    res["repr"] = repr(mod)
    mod.load_global_weight(global_weight(c).float())
    x, y = global_batch(0, c, splits, sum(sizes), "any")
    rows = local_rows(rank, sizes)
    xl, yl = x[rows].float(), y[rows]
    state0 = (mod.ema_state(), int(mod.sample_step[0]))

    # A rank with bad inputs: every rank raises, none hangs, nothing moves.
    bad = torch.randn(3, D + 1) if rank == 1 else xl
    res["err_local"] = _expect_error(mod, bad, yl[: bad.shape[0]])
    # A label out of range: rejected by phase 1 on every rank alike.
    res["err_label"] = _expect_error(mod, xl, torch.full_like(yl, c))
    # A non-finite weight on rank 1 only: its phase 1 fails, rank 0 hears.
    with torch.no_grad():
        keep = mod.weight.detach().clone()
        if rank == 1:
            mod.weight[0, 0] = float("nan")
    res["err_weight"] = _expect_error(mod, xl, yl)
    with torch.no_grad():
        mod.weight.copy_(keep)
    # Ranks sending features of different dtypes: refused on every rank.
    res["err_dtype"] = _expect_error(mod, xl.double() if rank == 1 else xl, yl)
    # int32 labels on one rank, int64 on the other: fine (gathered as int64).
    mod.eval()
    res["loss_int64"] = float(mod(xl, yl))
    res["loss_mixed_labels"] = float(mod(xl, yl.int() if rank == 1 else yl))
    mod.train()
    res["after_errors"] = (mod.ema_state(), int(mod.sample_step[0]))
    res["state0"] = state0

    # eval and no_grad leave the state and the step counter alone.
    mod.eval()
    l_eval = float(mod(xl, yl))
    mod.train()
    with torch.no_grad():
        l_nograd = float(mod(xl, yl))
    res["after_eval"] = (mod.ema_state(), int(mod.sample_step[0]))
    res["loss_eval"], res["loss_nograd"] = l_eval, l_nograd

    # ddp_grad_scale: the features' gradient times the world size, exactly.
    grads = []
    for scale in (False, True):
        m2 = adaface_rs.ShardedAdaFaceLoss(D, c, t_alpha=0.3, class_splits=splits, ddp_grad_scale=scale)
        m2.load_global_weight(global_weight(c).float())
        xg = xl.clone().requires_grad_()
        m2(xg, yl).backward()
        grads.append((xg.grad, m2.weight.grad))
    res["ddp_grad_scale"] = grads

    # Two training steps with an optimiser, then the checkpoint.
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    for step in range(2):
        xs, ys = global_batch(step, c, splits, sum(sizes), "any")
        opt.zero_grad()
        mod(xs[rows].float(), ys[rows]).backward()
        opt.step()
    sd = mod.state_dict()
    res["state_dict"] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}
    fresh = adaface_rs.ShardedAdaFaceLoss(D, c, t_alpha=0.3, class_splits=splits, sample_rate=0.5, seed=3)
    fresh.load_state_dict(sd)
    res["reloaded_equal"] = all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items() if isinstance(v, torch.Tensor))
    # Rank 0's shard into a rank-1 module (other layout) is refused.
    other = [None, None]
    dist.all_gather_object(other, res["state_dict"])
    res["err_wrong_shard"] = _expect_error(fresh.load_state_dict, other[1 - rank])
    # Ranks built differently: every rank raises at construction.
    res["err_layout"] = _expect_error(
        lambda: adaface_rs.ShardedAdaFaceLoss(D, c, class_splits=[6, 7] if rank == 0 else [7, 6])
    )
    return res


#: The CUDA equality cases: the CUDA runs use a larger D (the fused kernels'
#: tiles) and compare with the unsharded CUDA and CPU losses.
CUDA_CASES = {
    1: (13, [13], [9], "any"),
    2: (13, [9, 4], [6, 5], "boundary"),
}


def _cuda_single(rank: int, world: int) -> Dict[str, Any]:
    """One process, world 1, on one GPU (gloo or NCCL): the module's CUDA
    path, and (gloo) its CPU path on the same data."""
    c, splits, sizes, mode = CUDA_CASES[1]
    res: Dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16):
        res[f"cuda/{dtype}"] = _run_case(None, rank, c, splits, sizes, mode, dtype, device="cuda")
        if dist.get_backend() == "gloo":
            res[f"cpu/{dtype}"] = _run_case(None, rank, c, splits, sizes, mode, dtype)
    return res


def _cuda_errors(rank: int, world: int) -> Dict[str, Any]:
    """Errors on CUDA: found on the device, reported by check_last_step on
    every rank, the state unchanged everywhere."""
    import adaface_rs

    c, splits, sizes, mode = CUDA_CASES[world]
    mod = adaface_rs.ShardedAdaFaceLoss(D, c, t_alpha=0.3, class_splits=splits, device="cuda")
    mod.load_global_weight(global_weight(c).float())
    x, y = global_batch(0, c, splits, sum(sizes), mode)
    rows = local_rows(rank, sizes)
    xl, yl = x[rows].float().cuda(), y[rows].cuda()
    res: Dict[str, Any] = {}
    mod(xl, yl).backward()
    res["ok"] = mod.check_last_step()
    before = mod.ema_state()
    # A label out of range (every rank's stats kernel sees it).
    xg = xl.clone().requires_grad_()
    mod.weight.grad = None
    loss = mod(xg, torch.full_like(yl, c))
    loss.backward()
    res["label_loss_nan"] = bool(torch.isnan(loss).item())
    res["label_err"] = _expect_error(mod.check_last_step)
    res["label_grad_zero"] = bool((xg.grad == 0).all().item()) and bool((mod.weight.grad == 0).all().item())
    res["label_state"] = mod.ema_state() == before
    # A non-finite weight on the last rank only: every rank rejects the step.
    with torch.no_grad():
        keep = mod.weight.detach().clone()
        if rank == world - 1:
            mod.weight[0, 0] = float("nan")
    loss = mod(xl, yl)
    res["weight_loss_nan"] = bool(torch.isnan(loss).item())
    res["weight_err"] = _expect_error(mod.check_last_step)
    res["weight_state"] = mod.ema_state() == before
    with torch.no_grad():
        mod.weight.copy_(keep)
    # Partial FC is CPU-only: refused on every rank.
    pfc = adaface_rs.ShardedAdaFaceLoss(D, c, class_splits=splits, device="cuda", sample_rate=0.5)
    res["pfc_err"] = _expect_error(pfc, xl, yl)
    # Recovers.
    loss = mod(xl, yl)
    res["after"] = (float(loss), mod.check_last_step())
    return res


def _cuda_nccl1(rank: int, world: int) -> Dict[str, Any]:
    """World 1 over NCCL: the equality runs and the errors, one process (one
    kernel compilation)."""
    res = _cuda_single(rank, world)
    res["errors"] = _cuda_errors(rank, world)
    return res


def _cuda_nccl(rank: int, world: int) -> Dict[str, Any]:
    c, splits, sizes, mode = CUDA_CASES[world]
    res: Dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16):
        res[f"cuda/{dtype}"] = _run_case(None, rank, c, splits, sizes, mode, dtype, device="cuda")
    res["comm/bf16"] = _run_case(None, rank, c, splits, sizes, mode, torch.float32, steps=1, device="cuda", comm_dtype="bf16")
    res["errors"] = _cuda_errors(rank, world)
    return res


def worker(rank: int, world: int, init: str, which: str, queue: Any) -> None:
    """Entry point of one spawned rank: puts ``(rank, "ok", torch.save
    bytes of the results)`` or
    ``(rank, "error", traceback)`` on ``queue``."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        backend = "nccl" if which.startswith("nccl") else "gloo"
        if which.startswith(("nccl", "cuda")):
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
        try:
            res = {
                "world4": _world4,
                "world2": _world2,
                "cuda_gloo1": _cuda_single,
                "nccl1": _cuda_nccl1,
                "nccl2": _cuda_nccl,
            }[which](rank, world)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        # As bytes: tensors sent through a torch queue live in this process's
        # shared memory, gone once it exits.
        buf = io.BytesIO()
        torch.save(res, buf)
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - reported to the test
        queue.put((rank, "error", traceback.format_exc()))
