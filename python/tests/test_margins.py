"""The margin policies beyond the affine four (SphereFace, CurricularFace,
MagFace) through the module, against an independent oracle: each paper's
formula written here in plain torch, differentiated by autograd, and
finite differences (gradcheck) of the reference backend."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

import adaface_rs

from conftest import random_inputs, rel

EPS = 1e-3  # the config's cosine clamp (the official head's eps)


def _cosines(x, w):
    xh = x / x.norm(dim=1, keepdim=True)
    wh = w / w.norm(dim=1, keepdim=True)
    return (xh @ wh.t()).clamp(-1 + EPS, 1 - EPS)


def _arc(cos_y, margin):
    """cos(clip(theta + margin, eps, pi - eps))."""
    return torch.cos((torch.acos(cos_y) + margin).clamp(EPS, math.pi - EPS))


def oracle(policy, x, w, y, s, params, t_before=0.0, t_alpha=0.01):
    """The mean loss of one step in plain torch (autograd gives both
    gradients), and CurricularFace's updated ``t``."""
    cos = _cosines(x, w)
    cos_y = cos.gather(1, y[:, None]).squeeze(1)
    logits = s * cos
    reg = torch.zeros((), dtype=x.dtype)
    t_after = t_before
    if policy == "sphereface":
        m, lam = params["sphere_m"], params["sphere_lambda"]
        theta = torch.acos(cos_y)
        k = torch.floor(m * theta.detach() / math.pi).clamp(max=m - 1)
        psi = (1 - 2 * (k % 2)) * torch.cos(m * theta) - 2 * k
        target = s * (lam * cos_y + psi) / (1 + lam)
    elif policy == "curricularface":
        m = params["m"]
        t_after = t_alpha * float(cos_y.detach().mean()) + (1 - t_alpha) * t_before
        threshold = _arc(cos_y.detach(), m)
        hard = cos.detach() > threshold[:, None]
        logits = s * torch.where(hard, cos * (t_after + cos), cos)
        target = s * _arc(cos_y, m)
    elif policy == "magface":
        l_a, u_a, l_m, u_m = (params[k] for k in ("l_a", "u_a", "l_m", "u_m"))
        a = x.norm(dim=1).clamp(l_a, u_a)
        margin = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        target = s * _arc(cos_y, margin)
        reg = params["lambda_g"] * (a / u_a**2 + 1 / a).mean()
    else:
        raise AssertionError(policy)
    logits = logits.scatter(1, y[:, None], target[:, None])
    loss = (torch.logsumexp(logits, dim=1) - target).mean() + reg
    return loss, t_after


PARAMS = {
    "sphereface": dict(sphere_m=4, sphere_lambda=5.0),
    # m = 0.5 makes many negatives hard at these random inputs.
    "curricularface": dict(m=0.5),
    # Bounds that the inputs' norms (about 3 to 230) straddle, so rows on
    # both sides of the clamp are covered.
    "magface": dict(l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0),
}

SHAPES = [(7, 33, 19), (1, 5, 3), (12, 64, 130)]


def _module(policy, d, c, dtype, backend, **extra):
    return adaface_rs.AdaFaceLoss(
        d, c, margin=policy, s=16.0, dtype=dtype, backend=backend, **PARAMS[policy], **extra
    )


@pytest.mark.parametrize("policy", sorted(PARAMS))
@pytest.mark.parametrize("backend,dtype,tol", [("reference", torch.float64, 1e-10), ("cpu", torch.float32, 2e-4)])
@pytest.mark.parametrize("shape", SHAPES)
def test_steps_match_the_torch_oracle(policy, backend, dtype, tol, shape):
    """Three training steps: loss, both gradients and the EMA state
    (CurricularFace's ``t`` included) against the oracle."""
    b, d, c = shape
    mod = _module(policy, d, c, dtype, backend)
    t = 0.0
    for step in range(3):
        x, w, y = random_inputs(b, d, c, seed=100 + step, dtype=torch.float64)
        with torch.no_grad():
            mod.weight.copy_(w.to(dtype))
        xr = x.to(dtype).clone().requires_grad_()
        loss = mod(xr, y)
        loss.backward()

        xo = x.clone().requires_grad_()
        wo = w.clone().requires_grad_()
        want, t = oracle(policy, xo, wo, y, 16.0, PARAMS[policy], t_before=t)
        want.backward()

        loss, want = loss.detach(), want.detach()
        assert abs(float(loss) - float(want)) <= tol * max(1.0, abs(float(want))), (step, float(loss), float(want))
        assert rel(xr.grad, xo.grad) <= tol, (step, rel(xr.grad, xo.grad))
        assert rel(mod.weight.grad, wo.grad) <= tol, (step, rel(mod.weight.grad, wo.grad))
        mod.weight.grad = None
        if policy == "curricularface":
            assert abs(float(mod.curricular_t) - t) <= 1e-12 + tol * abs(t), (step, float(mod.curricular_t), t)
    if policy == "curricularface":
        assert t != 0.0  # the state moved


def test_oracle_tells_the_policies_apart():
    """The oracle is not vacuous: a wrong parameter changes its loss."""
    x, w, y = random_inputs(7, 33, 19, seed=5, dtype=torch.float64)
    for policy, params in PARAMS.items():
        base, _ = oracle(policy, x, w, y, 16.0, params, t_before=0.2)
        bent = dict(params)
        key = next(iter(params))
        bent[key] = params[key] + 1
        other, _ = oracle(policy, x, w, y, 16.0, bent, t_before=0.2)
        assert abs(float(base) - float(other)) > 1e-3, policy


@pytest.mark.parametrize("policy", sorted(PARAMS))
def test_gradcheck_reference_float64(policy):
    """Finite differences in float64 through the reference backend, in eval
    mode (the state stays). CurricularFace's ``t`` starts at 0.4 and barely
    moves (``t_alpha`` 1e-9), so the detached ``t`` is a constant of the
    differences too."""
    b, d, c = 5, 9, 11
    x, w, y = random_inputs(b, d, c, seed=3, dtype=torch.float64)
    extra = dict(t_alpha=1e-9) if policy == "curricularface" else {}
    mod = _module(policy, d, c, torch.float64, "reference", **extra)
    if policy == "curricularface":
        mod.curricular_t.fill_(0.4)
    mod.eval()
    mod.reentrant_backward = True

    def f(x_, w_):
        return functional_call(mod, {"weight": w_}, (x_, y))

    assert torch.autograd.gradcheck(
        f, (x.clone().requires_grad_(), w.clone().requires_grad_()), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_curricular_t_is_a_checkpointed_buffer():
    mod = _module("curricularface", 8, 5, torch.float32, "cpu")
    assert "curricular_t" in mod.state_dict()
    assert "curricular_t" not in adaface_rs.AdaFaceLoss(8, 5).state_dict()
    x, w, y = random_inputs(6, 8, 5, seed=1)
    mod(x, y).backward()
    moved = float(mod.curricular_t)
    assert moved != 0.0
    again = _module("curricularface", 8, 5, torch.float32, "cpu")
    again.load_state_dict(mod.state_dict())
    assert float(again.curricular_t) == moved
    # Evaluation computes with the updated t but keeps the state.
    mod.eval()
    mod(x, y)
    assert float(mod.curricular_t) == moved


def test_defaults_and_repr():
    cur = adaface_rs.AdaFaceLoss(8, 5, margin="curricularface")
    assert cur.m == 0.5  # CurricularFace's own default
    assert adaface_rs.AdaFaceLoss(8, 5, margin="arcface").m == 0.4
    assert "sphere_m=4, sphere_lambda=5.0" in repr(adaface_rs.AdaFaceLoss(8, 5, margin="sphereface"))
    assert "l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0" in repr(
        adaface_rs.AdaFaceLoss(8, 5, margin="magface")
    )


@pytest.mark.parametrize(
    "kw",
    [
        dict(margin="sphereface", sphere_m=0),
        dict(margin="sphereface", sphere_m=2.5),
        dict(margin="sphereface", sphere_lambda=-1.0),
        dict(margin="magface", l_a=50.0, u_a=20.0),
        dict(margin="magface", l_m=0.8, u_m=0.45),
        dict(margin="curricularface", m=float("nan")),
        dict(margin="spherefaces"),
    ],
)
def test_bad_parameters_raise_value_error(kw):
    with pytest.raises(ValueError):
        adaface_rs.AdaFaceLoss(8, 5, **kw)


def test_native_layer_reads_and_writes_t_only_when_given():
    """The native step moves ``t`` through the pointer it is handed, and a
    null ``state_t`` leaves the policy's ``t`` at 0 without touching memory."""
    from adaface_rs import _native

    cfg = _native.Config("curricularface", 0.5, 0.333, 16.0, 0.5)
    assert cfg.has_curricular_t() and not cfg.is_affine()
    x, w, y = random_inputs(4, 6, 5, seed=9)
    mean = torch.tensor([20.0], dtype=torch.float64)
    std = torch.tensor([100.0], dtype=torch.float64)
    t = torch.tensor([0.25], dtype=torch.float64)
    p = lambda v: v.data_ptr()  # noqa: E731
    args = (cfg, 4, 6, 5, "float32", "int64", p(x), p(w), p(y), 0, 0)
    with_t = _native.cpu_step(*args, p(mean), p(std), True, p(t))
    assert float(t) != 0.25
    mean.fill_(20.0)
    std.fill_(100.0)
    without = _native.cpu_step(*args, p(mean), p(std), True)
    assert with_t != without  # t = 0.25 vs 0 changed the hard negatives
