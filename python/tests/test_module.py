"""The module as a PyTorch user meets it: gradcheck, training, checkpoints,
eval mode, requires_grad, dtypes and layouts, pickling, errors."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.func import functional_call

import adaface_rs
from adaface_rs import _native
from conftest import random_inputs, rel


# -- gradcheck ----------------------------------------------------------------

def _gradcheck(mod, x, y, w):
    def f(x_, w_):
        return functional_call(mod, {"weight": w_}, (x_, y))

    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    mod.reentrant_backward = True
    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "margin,kw",
    [
        ("arcface", dict(m=0.5)),
        ("cosface", dict(m=0.35)),
        ("combined", dict(m1=0.9, m2=0.3, m3=0.15)),
        # h = 0: the margin scaler is 0 whatever the norms (CosFace(m) inside
        # AdaFace's formula).
        ("adaface", dict(m=0.4, h=0.0)),
    ],
)
def test_gradcheck_reference_float64(margin, kw):
    """Finite differences in float64 through the reference backend. The
    analytic gradient holds the margin scaler fixed (as the official head's
    detach does), so these configurations have a scaler that cannot move."""
    b, d, c = 5, 7, 11
    x, w, y = random_inputs(b, d, c, seed=3, dtype=torch.float64)
    mod = adaface_rs.AdaFaceLoss(d, c, margin=margin, s=8.0, dtype=torch.float64, backend="reference", **kw)
    mod.eval()
    _gradcheck(mod, x, y, w)


def test_gradcheck_adaface_saturated_scaler():
    """AdaFace with every scaler clipped at -1 or +1 (EMA std 0, t_alpha 0):
    the scalers stay put under small perturbations, so finite differences of
    the full loss check the gradient, margins included."""
    b, d, c = 6, 5, 9
    x, w, y = random_inputs(b, d, c, seed=4, dtype=torch.float64)
    mod = adaface_rs.AdaFaceLoss(d, c, m=0.4, h=0.333, s=8.0, t_alpha=1e-12, dtype=torch.float64, backend="reference")
    norms = x.norm(dim=1).sort().values
    assert float(norms[3] - norms[2]) > 0.1
    with torch.no_grad():
        # Half the rows far below the mean (z = -1), half far above (z = +1).
        mod.batch_mean.fill_(float(norms[2] + norms[3]) / 2)
        mod.batch_std.fill_(0.0)
    mod.eval()
    _gradcheck(mod, x, y, w)


# -- training -----------------------------------------------------------------

def test_training_loop_loss_falls():
    torch.manual_seed(0)
    b, d, c, n = 33, 24, 17, 40
    centers = torch.randn(c, 16)
    backbone = torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.ReLU(), torch.nn.Linear(48, d))
    head = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.1)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    losses = []
    for step in range(n):
        y = torch.randint(0, c, (b,))
        inputs = centers[y] + 0.3 * torch.randn(b, 16)
        loss = head(backbone(inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert head.ema_state() != (20.0, 100.0)


# -- state --------------------------------------------------------------------

def test_state_dict_round_trip(tmp_path):
    b, d, c = 9, 13, 21
    x, w, y = random_inputs(b, d, c, seed=5)
    a = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5)
    with torch.no_grad():
        a.weight.copy_(w)
    a(x, y).backward()
    a(x * 0.5, y).backward()
    sd = a.state_dict()
    assert set(sd) == {"weight", "batch_mean", "batch_std"}
    path = tmp_path / "ckpt.pt"
    torch.save(sd, path)
    bmod = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5)
    bmod.load_state_dict(torch.load(path))
    assert bmod.ema_state() == a.ema_state()
    assert torch.equal(bmod.weight, a.weight)
    # Both continue identically.
    la, lb = a(x, y), bmod(x, y)
    assert float(la) == float(lb)
    assert a.ema_state() == bmod.ema_state()


@pytest.mark.parametrize("mode", ["eval", "no_grad", "inference_mode"])
def test_eval_leaves_state(mode):
    b, d, c = 11, 8, 19
    x, w, y = random_inputs(b, d, c, seed=6)
    mod = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.7)
    mod(x, y)  # training, with grad: moves the state
    before = mod.ema_state()
    assert before != (20.0, 100.0)
    if mode == "eval":
        mod.eval()
        loss = mod(x * 2, y)
    elif mode == "no_grad":
        with torch.no_grad():
            loss = mod(x * 2, y)
    else:
        with torch.inference_mode():
            loss = mod(x * 2, y)
    assert torch.isfinite(loss)
    assert mod.ema_state() == before
    mod.train()
    mod(x * 2, y)
    assert mod.ema_state() != before


def test_requires_grad_respected():
    b, d, c = 7, 6, 10
    x, w, y = random_inputs(b, d, c, seed=7)
    mod = adaface_rs.AdaFaceLoss(d, c)
    with torch.no_grad():
        mod.weight.copy_(w)
    full = adaface_rs.AdaFaceLoss(d, c)
    full.load_state_dict(mod.state_dict())
    xg = x.clone().requires_grad_()
    full(xg, y).backward()
    # Weight frozen: only the features get a gradient.
    mod.weight.requires_grad_(False)
    x1 = x.clone().requires_grad_()
    mod(x1, y).backward()
    assert mod.weight.grad is None
    assert rel(x1.grad, xg.grad) < 1e-6
    # Features without grad: only the weight.
    mod.weight.requires_grad_(True)
    mod.load_state_dict({"weight": w, "batch_mean": torch.tensor([20.0], dtype=torch.float64),
                         "batch_std": torch.tensor([100.0], dtype=torch.float64)})
    x2 = x.clone()
    mod(x2, y).backward()
    assert x2.grad is None
    assert rel(mod.weight.grad, full.weight.grad) < 1e-6
    # Neither: a plain loss, no graph.
    mod.weight.requires_grad_(False)
    out = mod(x.clone(), y)
    assert not out.requires_grad


def test_backward_once_unless_reentrant():
    b, d, c = 6, 7, 9
    x, w, y = random_inputs(b, d, c, seed=15)
    mod = adaface_rs.AdaFaceLoss(d, c).eval()
    xa = x.clone().requires_grad_()
    loss = mod(xa, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already used by a backward"):
        loss.backward()
    mod.reentrant_backward = True
    xb = x.clone().requires_grad_()
    mod.weight.grad = None
    loss = mod(xb, y)
    loss.backward(retain_graph=True)
    first = (xb.grad.clone(), mod.weight.grad.clone())
    loss.backward()
    assert torch.allclose(xb.grad, 2 * first[0]) and torch.allclose(mod.weight.grad, 2 * first[1])
    assert rel(first[0], xa.grad) < 1e-7


def test_loss_scaling_reaches_gradients():
    b, d, c = 5, 9, 12
    x, w, y = random_inputs(b, d, c, seed=8)
    mod = adaface_rs.AdaFaceLoss(d, c).eval()
    with torch.no_grad():
        mod.weight.copy_(w)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    mod(x1, y).backward()
    g1 = mod.weight.grad.clone()
    mod.weight.grad = None
    (mod(x2, y) * -2.5).backward()
    assert rel(x2.grad, -2.5 * x1.grad) < 1e-6
    assert rel(mod.weight.grad, -2.5 * g1) < 1e-6


def test_non_contiguous_and_int32_labels_agree():
    b, d, c = 13, 10, 15
    x, w, y = random_inputs(b, d, c, seed=9)
    mod = adaface_rs.AdaFaceLoss(d, c).eval()
    with torch.no_grad():
        mod.weight.copy_(w)
    a = x.clone().requires_grad_()
    la = mod(a, y)
    la.backward()
    base = torch.zeros(d, b).copy_(x.t())
    bx = base.t().requires_grad_() if False else base.t()
    assert not bx.is_contiguous()
    bx = bx.detach().requires_grad_()
    lb = mod(bx, y.to(torch.int32))
    lb.backward()
    assert float(la) == float(lb)
    assert torch.equal(a.grad, bx.grad)


def test_forward_normalized_matches_raw():
    """Unit embeddings and norms as the official backbone returns them: the
    loss and the gradient reaching the raw features equal forward()'s."""
    b, d, c = 10, 12, 14
    x, w, y = random_inputs(b, d, c, seed=11)
    mod = adaface_rs.AdaFaceLoss(d, c).eval()
    with torch.no_grad():
        mod.weight.copy_(w)
    xa = x.clone().requires_grad_()
    la = mod(xa, y)
    la.backward()
    gw = mod.weight.grad.clone()
    mod.weight.grad = None
    xb = x.clone().requires_grad_()
    norms = xb.norm(dim=1, keepdim=True)
    lb = mod.forward_normalized(xb / norms, norms, y)
    lb.backward()
    assert abs(float(la) - float(lb)) <= 1e-5 * abs(float(la))
    assert rel(xb.grad, xa.grad) < 1e-4
    assert rel(mod.weight.grad, gw) < 1e-5


def test_load_official_state_dict_mapping():
    d, c = 6, 8
    mod = adaface_rs.AdaFaceLoss(d, c)
    kernel = torch.randn(d, c)
    sd = {"head.kernel": kernel, "head.batch_mean": torch.tensor([17.5]), "head.batch_std": torch.tensor([3.25])}
    mod.load_official_state_dict(sd)
    assert torch.equal(mod.weight.detach(), kernel.t())
    assert mod.ema_state() == (17.5, 3.25)
    with pytest.raises(ValueError, match="kernel has shape"):
        mod.load_official_state_dict({"kernel": torch.randn(c, d), "batch_mean": torch.ones(1), "batch_std": torch.ones(1)})
    with pytest.raises(ValueError, match="lacks"):
        mod.load_official_state_dict({"kernel": kernel})
    assert mod.ema_state() == (17.5, 3.25)


def test_module_survives_half_and_dtype_moves():
    b, d, c = 7, 16, 9
    x, w, y = random_inputs(b, d, c, seed=12)
    mod = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5)
    mod.bfloat16()  # also casts the float buffers: the module restores float64
    xb = x.bfloat16().requires_grad_()
    loss = mod(xb, y)
    loss.backward()
    assert xb.grad.dtype == torch.bfloat16 and mod.weight.grad.dtype == torch.bfloat16
    assert mod.batch_mean.dtype == torch.float64 and torch.isfinite(loss)


# -- Python niceties ----------------------------------------------------------

def test_repr_pickle_deepcopy():
    b, d, c = 6, 7, 8
    x, w, y = random_inputs(b, d, c, seed=13)
    mod = adaface_rs.AdaFaceLoss(d, c, margin="combined", m1=0.95, m2=0.25, m3=0.05, t_alpha=0.2)
    mod(x, y)
    r = repr(mod)
    assert "AdaFaceLoss(" in r and "num_classes=8" in r and "margin='combined'" in r and "m2=0.25" in r
    for make in (lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy):
        clone = make(mod)
        assert clone.ema_state() == mod.ema_state()
        assert torch.equal(clone.weight, mod.weight)
        assert repr(clone) == r
        assert float(clone(x, y)) == float(mod(x, y))
        assert clone.ema_state() == mod.ema_state()
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert again.ema_state() == mod.ema_state()


# -- errors -------------------------------------------------------------------

def _assert_untouched(mod, state, x):
    assert mod.ema_state() == state
    assert mod.weight.grad is None
    assert x.grad is None


@pytest.mark.parametrize(
    "what,exc,match",
    [
        ("label_range", ValueError, "outside 0..10"),
        ("negative_label", ValueError, "label -1 at row"),
        ("nan", ValueError, "non-finite value in features"),
        ("inf_weight", ValueError, "non-finite value in weight"),
        ("zero_row", ValueError, "zero norm"),
        ("zero_class", ValueError, "weight row 4 has zero norm"),
        ("empty_batch", ValueError, "empty batch"),
        ("norm_overflow", ValueError, "features row 2 has a norm too large"),
        ("bad_state", ValueError, "invalid EMA state"),
        ("rank", ValueError, "must have 2 dimensions"),
        ("columns", ValueError, "columns"),
        ("label_count", ValueError, "entries for a batch"),
        ("label_dtype", ValueError, "integer tensor"),
        ("device", ValueError, "one device"),
        ("not_tensor", ValueError, "must be a torch.Tensor"),
    ],
)
def test_errors_raise_and_write_nothing(what, exc, match):
    b, d, c = 7, 5, 10
    x, w, y = random_inputs(b, d, c, seed=14)
    mod = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5)
    with torch.no_grad():
        mod.weight.copy_(w)
    mod(x, y)  # a state away from the initial one
    state = mod.ema_state()
    w_before = mod.weight.detach().clone()
    x = x.clone()
    if what == "label_range":
        y[3] = 10
    elif what == "negative_label":
        y[2] = -1
    elif what == "nan":
        x[4, 2] = float("nan")
    elif what == "inf_weight":
        with torch.no_grad():
            mod.weight[3, 1] = float("inf")
        w_before = mod.weight.detach().clone()
    elif what == "zero_row":
        x[1] = 0.0
    elif what == "zero_class":
        with torch.no_grad():
            mod.weight[4] = 0.0
        w_before = mod.weight.detach().clone()
    elif what == "norm_overflow":
        x[2] = 3.0e38
    elif what == "empty_batch":
        x, y = x[:0].clone(), y[:0].clone()
    elif what == "bad_state":
        with torch.no_grad():
            mod.batch_std.fill_(-1.0)
        state = mod.ema_state()
    elif what == "rank":
        x = x.reshape(b, d, 1)
    elif what == "columns":
        x = x[:, :4].clone()
    elif what == "label_count":
        y = y[:5].clone()
    elif what == "label_dtype":
        y = y.float()
    elif what == "device":
        x = x.to("meta")
    elif what == "not_tensor":
        x = x.tolist()
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        x.requires_grad_()
    with pytest.raises(exc, match=match):
        mod(x, y)
    assert mod.ema_state() == state
    assert mod.weight.grad is None
    assert torch.equal(mod.weight.detach(), w_before)


def test_config_errors():
    with pytest.raises(ValueError, match="invalid config: s = -1"):
        adaface_rs.AdaFaceLoss(4, 5, s=-1.0)
    with pytest.raises(ValueError, match="invalid config: m"):
        adaface_rs.AdaFaceLoss(4, 5, m=float("nan"))
    with pytest.raises(ValueError, match="unknown margin"):
        adaface_rs.AdaFaceLoss(4, 5, margin="elasticface")
    with pytest.raises(ValueError, match="positive int"):
        adaface_rs.AdaFaceLoss(0, 5)


def test_native_layer_rejects_bad_calls():
    """What Python never passes still cannot crash the interpreter."""
    cfg = _native.Config("adaface", 0.4, 0.333, 64.0, 0.01)
    mean = torch.tensor([20.0], dtype=torch.float64)
    std = torch.tensor([100.0], dtype=torch.float64)
    x = torch.ones(2, 3)
    w = torch.ones(4, 3)
    y = torch.zeros(2, dtype=torch.int64)
    p = lambda t: t.data_ptr()  # noqa: E731
    with pytest.raises(RuntimeError, match="null or misaligned"):
        _native.cpu_step(cfg, 2, 3, 4, "float32", "int64", 0, p(w), p(y), 0, 0, p(mean), p(std), True)
    with pytest.raises(RuntimeError, match="null or misaligned"):
        _native.cpu_step(cfg, 2, 3, 4, "float32", "int64", p(x) + 1, p(w), p(y), 0, 0, p(mean), p(std), True)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _native.cpu_step(cfg, 2, 3, 4, "float64", "int64", p(x), p(w), p(y), 0, 0, p(mean), p(std), True)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _native.cpu_step(cfg, 2, 3, 4, "float32", "uint8", p(x), p(w), p(y), 0, 0, p(mean), p(std), True)
    with pytest.raises(ValueError, match="too large"):
        _native.cpu_step(cfg, 2**62, 2**62, 4, "float32", "int64", p(x), p(w), p(y), 0, 0, p(mean), p(std), True)
    with pytest.raises(ValueError, match="dim must be at least 1"):
        _native.cpu_step(cfg, 2, 0, 4, "float32", "int64", p(x), p(w), p(y), 0, 0, p(mean), p(std), True)
    with pytest.raises(OverflowError):
        _native.cpu_step(cfg, -2, 3, 4, "float32", "int64", p(x), p(w), p(y), 0, 0, p(mean), p(std), True)
    assert (float(mean), float(std)) == (20.0, 100.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; a GPU is present")
def test_cuda_unavailable_is_runtime_error():
    if not adaface_rs.cuda_compiled():
        pytest.skip("built without the CUDA backend")
    cfg = _native.Config("adaface", 0.4, 0.333, 64.0, 0.01)
    with pytest.raises(RuntimeError, match="device unavailable"):
        _native.CudaHead(cfg, 0, 0)


def test_forward_normalized_rejects_bad_norms():
    mod = adaface_rs.AdaFaceLoss(4, 6)
    e = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    y = torch.randint(0, 6, (5,))
    with pytest.raises(ValueError, match="one value per row"):
        mod.forward_normalized(e, torch.ones(4), y)
    with pytest.raises(ValueError, match="2-dimensional"):
        mod.forward_normalized(e[0], torch.ones(5), y)
    assert mod.ema_state() == (20.0, 100.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_inputs_read_in_place(dtype):
    """Contiguous CPU tensors of the weight's dtype reach the native call as
    their own memory; a transposed view is copied once."""
    from adaface_rs._loss import _Plan

    b, d, c = 5, 8, 7
    x, w, y = random_inputs(b, d, c, seed=16, dtype=dtype)
    mod = adaface_rs.AdaFaceLoss(d, c, dtype=dtype)
    plan = _Plan(mod, x, mod.weight, y)
    assert plan.kind == "cpu" and plan.dtype == dtype
    assert plan.features.data_ptr() == x.data_ptr()
    assert plan.weight.data_ptr() == mod.weight.data_ptr()
    assert plan.labels.data_ptr() == y.data_ptr()
    xt = torch.empty(d, b, dtype=dtype).t()
    xt.copy_(x)
    plan = _Plan(mod, xt, mod.weight, y)
    assert plan.features.is_contiguous() and plan.features.data_ptr() != xt.data_ptr()
