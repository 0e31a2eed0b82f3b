"""ShardedAdaFaceLoss over torch.distributed (gloo, 2 and 4 spawned
processes, each run bounded in time): equal to the unsharded AdaFaceLoss
for K = 1..4 uneven shards, Partial FC, comm_dtype, errors on every rank,
eval/no_grad, checkpoints and the merge/split tool; and the native split
phase directly (no processes)."""

from __future__ import annotations

import io
import os
import queue as queue_mod
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.multiprocessing as mp

import adaface_rs
from adaface_rs import _native, shards

import _dist_worker as W
from conftest import rel

TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(which: str, world: int) -> List[Dict[str, Any]]:
    """Runs ``_dist_worker.worker`` on ``world`` gloo ranks; fails (never
    hangs) if a rank errs or the run passes TIMEOUT_S."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [ctx.Process(target=W.worker, args=(r, world, init, which, queue), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results: Dict[int, Any] = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(results) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{which}: ranks {sorted(set(range(world)) - set(results))} did not finish in {TIMEOUT_S} s")
            try:
                rank, status, payload = queue.get(timeout=min(left, 5.0))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results]
                if dead:
                    # A rank that exited after its put: its result is queued.
                    try:
                        rank, status, payload = queue.get(timeout=5.0)
                    except queue_mod.Empty:
                        pytest.fail(f"{which}: ranks {dead} died without a result")
                else:
                    continue
            if status != "ok":
                pytest.fail(f"{which}: rank {rank} failed:\n{payload}")
            results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


@pytest.fixture(scope="module")
def world4() -> List[Dict[str, Any]]:
    return _spawn("world4", 4)


@pytest.fixture(scope="module")
def world2() -> List[Dict[str, Any]]:
    return _spawn("world2", 2)


def _unsharded(c, splits, sizes, mode, dtype, steps, weight=None, **kw):
    """The unsharded module on the same global batches, step by step."""
    ref = adaface_rs.AdaFaceLoss(W.D, c, t_alpha=0.3, dtype=dtype, **kw)
    with torch.no_grad():
        ref.weight.copy_(W.global_weight(c) if weight is None else weight)
    out = []
    for step in range(steps):
        x, y = W.global_batch(step, c, splits, sum(sizes), mode)
        x = x.to(dtype).requires_grad_()
        ref.weight.grad = None
        loss = ref(x, y)
        loss.backward()
        out.append({"loss": float(loss.detach()), "gx": x.grad, "gw": ref.weight.grad.clone(), "state": ref.ema_state()})
    return out


def _gather(ranks, key, step):
    """The ranks' records of ``key`` at ``step``, for the ranks that ran it."""
    return [r[key][step] for r in ranks if key in r]


# -- equality with the unsharded loss ------------------------------------------

@pytest.mark.parametrize("name", sorted(W.EQUALITY))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sharded_equals_unsharded(world4, name, dtype):
    """K shards (uneven, a one-class shard, labels at the boundaries or none
    in the last shard, uneven and empty local batches), three steps with the
    EMA carried: loss, dX (the ranks' rows concatenated), dW (the shards
    concatenated) and the EMA state equal the unsharded step's, to 1e-6
    (float32, fused CPU) or 1e-12 (float64, exact reference)."""
    c, splits, sizes, mode = W.EQUALITY[name]
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    want = _unsharded(c, splits, sizes, mode, dtype, W.STEPS)
    key = f"{name}/{dtype}"
    for step in range(W.STEPS):
        got = _gather(world4, key, step)
        assert len(got) == len(splits)
        assert [g["offset"] for g in got] == [sum(splits[:k]) for k in range(len(splits))]
        for g in got:
            assert g["loss"] == got[0]["loss"], "every rank reports the same loss"
            assert g["state"] == got[0]["state"], "every rank holds the same EMA state"
            assert g["sampled"] is None
            assert g["sample_step"] == step + 1
        w = want[step]
        assert abs(got[0]["loss"] - w["loss"]) <= tol * abs(w["loss"]), (step, got[0]["loss"], w["loss"])
        gx = torch.cat([g["gx"] for g in got])
        gw = torch.cat([g["gw"] for g in got])
        assert gx.dtype == dtype and gw.dtype == dtype
        assert rel(gx, w["gx"]) <= tol, (step, rel(gx, w["gx"]))
        assert rel(gw, w["gw"]) <= tol, (step, rel(gw, w["gw"]))
        for a, b in zip(got[0]["state"], w["state"]):
            assert abs(a - b) <= tol * abs(b), (step, got[0]["state"], w["state"])
    # The state moved: the steps are not trivially equal to the first.
    assert want[0]["state"] != want[-1]["state"]


def test_layouts_cover_the_cases():
    """The equality cases hold what the tests claim they do."""
    c, splits, sizes, mode = W.EQUALITY["k3"]
    assert 1 in splits and 0 in sizes
    for step in range(W.STEPS):
        _, y = W.global_batch(step, c, splits, sum(sizes), mode)
        assert int(y.max()) < c - splits[-1], "the last shard holds no label"
    c, splits, sizes, mode = W.EQUALITY["k4"]
    _, y = W.global_batch(0, c, splits, sum(sizes), mode)
    assert {3, 4, 5, 10, 11} <= set(y.tolist()), "labels on both sides of every boundary"
    assert len(set(sizes)) > 1


@pytest.mark.parametrize("comm,tol", [("bf16", 8e-3), ("fp16", 1e-3)])
def test_comm_dtype_close_to_exact(world4, comm, tol):
    """dX reduce-scattered in bf16/fp16: each of the 4 ranks' partials is
    rounded once to the comm dtype (unit roundoff u = 2^-9 for bf16, 2^-12
    for fp16) and their sum rounds at most 3 more times, so each element is
    off by at most about 4 u times the sum of the partials' magnitudes:
    4 u = 7.8e-3 (bf16) and 9.8e-4 (fp16) relative when the partials do not
    cancel (measured here: 1.7e-3 and 2.6e-4). The loss and dW do not
    travel in comm_dtype: they are exact."""
    c, splits, sizes, mode = W.EQUALITY["k4"]
    exact = _gather(world4, f"k4/{torch.float32}", 0)
    got = _gather(world4, f"comm/{comm}", 0)
    gx_exact = torch.cat([g["gx"] for g in exact])
    gx = torch.cat([g["gx"] for g in got])
    err = rel(gx, gx_exact)
    assert 0 < err <= tol, err
    for g, e in zip(got, exact):
        assert g["loss"] == e["loss"]
        assert torch.equal(g["gw"], e["gw"])


# -- Partial FC -----------------------------------------------------------------

def _labels_in(y: torch.Tensor, offset: int, k: int) -> set:
    return {int(v) - offset for v in y.tolist() if offset <= v < offset + k}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_partial_fc_equals_unsharded_on_the_kept_classes(world4, dtype):
    """Each sampled step keeps every positive and max(floor(rate * C_k),
    positives) classes per shard; dW is exactly zero on the others; and the
    loss, dX and dW of the kept rows equal the unsharded loss over the kept
    classes only (their weight rows, labels remapped), EMA carried."""
    c, splits, sizes, rate = W.PFC
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    key = f"pfc/{dtype}"
    state = None
    for step in range(2):
        got = _gather(world4, key, step)
        x, y = W.global_batch(step, c, splits, sum(sizes), "any")
        kept: List[int] = []
        for k, g in enumerate(got):
            off = g["offset"]
            s = g["sampled"]
            assert s is not None and s.dtype == torch.int64
            assert torch.equal(s, s.sort().values) and len(set(s.tolist())) == len(s)
            pos = _labels_in(y, off, splits[k])
            assert pos <= set(s.tolist()), "positives are kept"
            assert len(s) == max(int(rate * splits[k]), len(pos), 1)
            assert len(s) < splits[k], "the case does sample"
            mask = torch.ones(splits[k], dtype=torch.bool)
            mask[s] = False
            assert torch.all(g["gw"][mask] == 0), "dW exactly zero on unsampled rows"
            assert torch.all(g["gw"][s].abs().sum(dim=1) > 0)
            kept += [off + int(j) for j in s]
        # The unsharded loss over the kept classes.
        index = {cls: i for i, cls in enumerate(kept)}
        ref = adaface_rs.AdaFaceLoss(W.D, len(kept), t_alpha=0.3, dtype=dtype)
        with torch.no_grad():
            ref.weight.copy_(W.global_weight(c)[kept])
            if state is not None:
                ref.batch_mean.fill_(state[0])
                ref.batch_std.fill_(state[1])
        xr = x.to(dtype).requires_grad_()
        loss = ref(xr, torch.tensor([index[int(v)] for v in y]))
        loss.backward()
        state = ref.ema_state()
        value = float(loss.detach())
        assert abs(got[0]["loss"] - value) <= tol * abs(value)
        assert rel(torch.cat([g["gx"] for g in got]), xr.grad) <= tol
        gw_kept = torch.cat([g["gw"][g["sampled"]] for g in got])
        assert rel(gw_kept, ref.weight.grad) <= tol
        for a, b in zip(got[0]["state"], state):
            assert abs(a - b) <= tol * abs(b)


def test_partial_fc_deterministic(world4):
    """The same seed draws the same classes at each step; another step or
    another seed draws others."""
    a = [g for r in world4 for g in r["pfc/again"]]
    b = [g for r in world4 for g in r[f"pfc/{torch.float32}"]]
    for ga, gb in zip(a, b):
        assert torch.equal(ga["sampled"], gb["sampled"])
    r0 = world4[0]
    assert not torch.equal(r0["pfc/again"][0]["sampled"], r0["pfc/again"][1]["sampled"])
    assert any(
        not torch.equal(r["pfc/seed8"][0]["sampled"], r["pfc/again"][0]["sampled"]) for r in world4
    )


def test_partial_fc_finite_differences(world4):
    """Central differences of the sampled loss (float64, ArcFace, the same
    draw) along random directions of (x, W) equal the analytic directional
    derivative summed over the ranks; the sampled loss is not the full one;
    no_grad in training mode neither advances the draw nor the state."""
    fd = [r["fd"] for r in world4]
    assert all(f["step_after_grad"] == 1 for f in fd), "a training step advances the draw"
    assert all(f["step_after"] == 0 and not f["state_moved"] for f in fd), "no_grad does not"
    assert fd[0]["again"] == fd[0]["loss"], "the same draw again, without advancing"
    assert abs(fd[0]["unsampled"] - fd[0]["loss"]) > 1e-3, "sampling changes the loss"
    for k in range(3):
        num = fd[0]["pairs"][k][0]
        assert all(f["pairs"][k][0] == num for f in fd)
        analytic = sum(f["pairs"][k][1] for f in fd)
        assert abs(num - analytic) <= 1e-6 * max(1.0, abs(analytic)), (k, num, analytic)


def test_native_rate_one_equals_unsampled_bitwise():
    """The native split phase with sample_rate = 1 (every class kept) and
    without sampling: the same statistics, loss, dX and dW, bit for bit."""
    b, d, c = 9, 6, 11
    x, w, y = _inputs(b, d, c)
    runs = [_native_step(x, w, y, rate) for rate in (None, 1.0)]
    for a, z in zip(runs[0][:-1], runs[1][:-1]):
        assert torch.equal(a, z) if isinstance(a, torch.Tensor) else a == z
    assert runs[0][-1] is None and runs[1][-1] == list(range(c))


# -- the native split phase directly ----------------------------------------------

def _inputs(b, d, c, dtype=torch.float32):
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(b, d, generator=g) * 5).to(dtype)
    w = torch.randn(c, d, generator=g).to(dtype)
    y = torch.randint(0, c, (b,), generator=g)
    return x, w, y


def _cfg():
    return _native.Config("adaface", 0.4, 0.333, 64.0, 0.01)


def _state():
    mean0, std0 = _cfg().initial_state()
    return torch.tensor([mean0], dtype=torch.float64), torch.tensor([std0], dtype=torch.float64)


def _phase1(x, w, y, rate=None, partials=None, backend="cpu", dtype="float32", state=None):
    mean, std = state if state is not None else _state()
    b, d = x.shape
    if partials is None:
        partials = torch.full((5, b), float("nan"))
    p = _native.shard_phase1(
        _cfg(), backend, 0, w.shape[0], w.shape[0], b, d, dtype, "int64",
        x.data_ptr(), w.data_ptr(), y.data_ptr(), mean.data_ptr(), std.data_ptr(),
        rate, 5, 2, partials.data_ptr(),
    )
    return p, partials


def _native_step(x, w, y, rate):
    """One shard holding every class: phase 1, the trivial reduction, phase 2."""
    mean, std = _state()
    p, partials = _phase1(x, w, y, rate, state=(mean, std))
    b, d = x.shape
    gmax = partials[0].clone()
    sums = torch.empty(4 * b)
    p.sums_for(gmax.data_ptr(), sums.data_ptr())
    gx, gw = torch.empty(b, d), torch.empty(w.shape)
    loss = p.phase2(w.data_ptr(), gmax.data_ptr(), sums.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)
    return partials, sums, gx, gw, loss, mean, std, p.sampled()


def test_native_one_shard_equals_the_fused_step():
    """K = 1 through the native split phase equals cpu_step."""
    b, d, c = 9, 6, 11
    x, w, y = _inputs(b, d, c)
    _, _, gx, gw, loss, mean, std, sampled = _native_step(x, w, y, None)
    assert sampled is None
    ref = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.01)
    with torch.no_grad():
        ref.weight.copy_(w)
    xr = x.clone().requires_grad_()
    lr = ref(xr, y)
    lr.backward()
    value = float(lr.detach())
    assert abs(loss - value) <= 1e-6 * abs(value)
    assert rel(gx, xr.grad) <= 1e-6 and rel(gw, ref.weight.grad) <= 1e-6
    assert (float(mean), float(std)) == ref.ema_state()


def test_native_errors_write_nothing():
    """Bad inputs raise ValueError (bad backend, dtype, label out of range,
    non-finite weight, sample_rate outside (0, 1]) and leave the partials
    untouched; a finished step cannot run again (RuntimeError); phase 2
    after the state moved is refused and writes nothing."""
    b, d, c = 5, 4, 7
    x, w, y = _inputs(b, d, c)
    partials = torch.full((5, b), float("nan"))
    for kwargs in (dict(backend="gpu"), dict(dtype="int8"), dict(rate=0.0), dict(rate=1.5)):
        with pytest.raises(ValueError):
            _phase1(x, w, y, partials=partials, **kwargs)
    with pytest.raises(ValueError, match="label"):
        _phase1(x, w, torch.full_like(y, c), partials=partials)
    w_bad = w.clone()
    w_bad[2, 1] = float("inf")
    with pytest.raises(ValueError):
        _phase1(x, w_bad, y, partials=partials)
    assert torch.isnan(partials).all()

    mean, std = _state()
    p, partials = _phase1(x, w, y, state=(mean, std))
    gmax = partials[0].clone()
    sums = torch.empty(4 * b)
    p.sums_for(gmax.data_ptr(), sums.data_ptr())
    gx = torch.full((b, d), 7.0)
    gw = torch.full((c, d), 7.0)
    mean.fill_(3.0)
    with pytest.raises(ValueError, match="EMA state changed"):
        p.phase2(w.data_ptr(), gmax.data_ptr(), sums.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)
    assert torch.all(gx == 7.0) and torch.all(gw == 7.0) and float(mean) == 3.0
    # A row whose label no shard claims (owned summed to 0): refused.
    bad_sums = sums.clone()
    bad_sums[3 * b] = 0.0
    mean.fill_(_cfg().initial_state()[0])
    with pytest.raises(ValueError, match="held by"):
        p.phase2(w.data_ptr(), gmax.data_ptr(), bad_sums.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)
    assert torch.all(gx == 7.0) and torch.all(gw == 7.0)
    p.phase2(w.data_ptr(), gmax.data_ptr(), sums.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)
    assert not torch.all(gx == 7.0)
    with pytest.raises(RuntimeError, match="already finished"):
        p.phase2(w.data_ptr(), gmax.data_ptr(), sums.data_ptr(), gx.data_ptr(), gw.data_ptr(), mean.data_ptr(), std.data_ptr(), True)


def test_even_splits_and_arguments():
    """The default layout (the first C mod K shards one class larger) and
    the arguments checked before any collective."""
    from adaface_rs._sharded import _comm_dtype

    assert adaface_rs.even_splits(10, 4) == [3, 3, 2, 2]
    assert adaface_rs.even_splits(13, 1) == [13]
    with pytest.raises(ValueError):
        adaface_rs.even_splits(3, 4)
    assert _comm_dtype("bf16") == torch.bfloat16 and _comm_dtype(torch.float16) == torch.float16
    assert _comm_dtype(None) is None and _comm_dtype(torch.float32) is None
    for bad in ("int8", torch.float64, 3):
        with pytest.raises(ValueError, match="comm_dtype"):
            _comm_dtype(bad)
    for kwargs in (dict(sample_rate=0.0), dict(sample_rate=1.5), dict(margin="nope"), dict(seed=-1)):
        with pytest.raises(ValueError):
            adaface_rs.ShardedAdaFaceLoss(8, 10, **kwargs)


def test_module_needs_torch_distributed():
    """Built without an initialised process group: a clear RuntimeError."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        adaface_rs.ShardedAdaFaceLoss(8, 10)


# -- errors, eval, checkpoints (2 ranks) --------------------------------------------

def test_errors_raise_on_every_rank(world2):
    """A rank with bad inputs, a label out of range, a non-finite weight on
    one rank, features of different dtypes, ranks built with different
    layouts: every rank raises ValueError (none hangs) and the state stays.
    Label dtypes may differ between ranks."""
    r0, r1 = world2
    assert "embedding_size" in r1["err_local"] and r1["err_local"].startswith("ValueError")
    assert "rank(s) [1] rejected" in r0["err_local"]
    for r in world2:
        assert r["err_label"].startswith("ValueError") and "label" in r["err_label"].lower()
        assert r["after_errors"] == r["state0"]
        assert r["err_layout"].startswith("ValueError") and "build every rank alike" in r["err_layout"]
        assert r["err_wrong_shard"].startswith("ValueError") and "re-shard" in r["err_wrong_shard"]
        assert r["reloaded_equal"]
        assert r["err_dtype"].startswith("ValueError") and "share one dtype" in r["err_dtype"]
        assert r["loss_mixed_labels"] == r["loss_int64"]
    assert r1["err_weight"].startswith("ValueError") and "finite" in r1["err_weight"]
    assert "another rank's phase 1 failed" in r0["err_weight"]


def test_eval_and_no_grad_keep_state(world2):
    """eval() and no_grad compute the loss without moving the EMA state or
    Partial FC's step; eval uses every class (no sampling)."""
    for r in world2:
        assert r["after_eval"] == r["state0"]
        assert r["loss_eval"] != r["loss_nograd"], "training mode samples, eval does not"
    assert world2[0]["loss_eval"] == world2[1]["loss_eval"]
    assert world2[0]["loss_nograd"] == world2[1]["loss_nograd"]


def test_ddp_grad_scale(world2):
    """ddp_grad_scale=True multiplies the features' gradient by the world
    size (2), exactly, and leaves dW alone."""
    for r in world2:
        (gx, gw), (gx2, gw2) = r["ddp_grad_scale"]
        assert gx.abs().sum() > 0
        assert torch.equal(gx2, 2 * gx)
        assert torch.equal(gw2, gw)


def test_repr(world2):
    text = world2[1]["repr"]
    assert text.startswith("ShardedAdaFaceLoss(") and "rank=1/2" in text and "classes=6..13" in text
    assert "sample_rate=0.5" in text


def test_checkpoint_merge_split_round_trip(world2, tmp_path: Path):
    """Each rank's state_dict (trained two steps) -> merge -> one
    AdaFaceLoss state dict (loads strictly) -> split -> the same shards;
    through files and the command line too. Merging refuses overlaps, gaps
    and shards of different steps."""
    sds = [r["state_dict"] for r in world2]
    assert [sd["_extra_state"]["offset"] for sd in sds] == [0, 6]
    assert sds[0]["sample_step"].tolist() == [2]
    merged = shards.merge_shards(list(reversed(sds)))
    assert torch.equal(merged["weight"], torch.cat([sds[0]["weight"], sds[1]["weight"]]))
    assert not torch.equal(merged["weight"].double(), W.global_weight(13)), "the steps trained the weight"
    full = adaface_rs.AdaFaceLoss(W.D, 13)
    full.load_state_dict(merged)
    assert torch.equal(full.batch_mean, sds[0]["batch_mean"])
    back = shards.split_shards(merged, 2, [6, 7], sample_step=2)
    for a, b in zip(back, sds):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), k
            else:
                assert {q: a[k][q] for q in ("offset", "classes", "num_classes", "embedding_size")} == {
                    q: b[k][q] for q in ("offset", "classes", "num_classes", "embedding_size")
                }
    # Even three-way split of the merged weight.
    three = shards.split_shards(merged, 3)
    assert [sd["weight"].shape[0] for sd in three] == [5, 4, 4]
    assert torch.equal(shards.merge_shards(three)["weight"], merged["weight"])
    # Files and the command line.
    paths = []
    for k, sd in enumerate(sds):
        paths.append(tmp_path / f"shard{k}.pt")
        torch.save(sd, paths[-1])
    out = tmp_path / "merged.pt"
    assert shards.main(["merge", str(out), *map(str, paths)]) == 0
    assert torch.equal(torch.load(out, weights_only=True)["weight"], merged["weight"])
    assert shards.main(["split", str(out), str(tmp_path / "s{rank}.pt"), "--world-size", "2", "--class-splits", "6,7", "--sample-step", "2"]) == 0
    for k in range(2):
        sd = torch.load(tmp_path / f"s{k}.pt", weights_only=True)
        assert torch.equal(sd["weight"], sds[k]["weight"])
    # Refusals.
    with pytest.raises(ValueError, match="overlap|gap"):
        shards.merge_shards([sds[0], sds[0]])
    with pytest.raises(ValueError, match="missing"):
        shards.merge_shards([sds[0]])
    late = dict(sds[1])
    late["sample_step"] = torch.tensor([3])
    with pytest.raises(ValueError, match="same step"):
        shards.merge_shards([sds[0], late])


def test_sharded_train_example_runs(tmp_path: Path):
    """The example trains on 4 gloo ranks (a few steps) and its loss falls."""
    example = Path(__file__).resolve().parents[1] / "examples" / "sharded_train.py"
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(example), "--world-size", "4", "--steps", "12"],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(line.split()[-1]) for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 12
    assert losses[-1] < 0.8 * losses[0], losses
