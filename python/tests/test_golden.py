"""The module against the golden files of the official head and against the
crate's exact reference, over three steps with the EMA state carried."""

from __future__ import annotations

import pytest
import torch

import adaface_rs
from conftest import case_names, load_case, random_inputs, rel


def module_for(case, dtype, backend):
    cfg = case["config"]
    mod = adaface_rs.AdaFaceLoss(
        cfg["D"], cfg["C"], m=cfg["m"], h=cfg["h"], s=cfg["s"], t_alpha=cfg["t_alpha"],
        dtype=dtype, backend=backend,
    )
    with torch.no_grad():
        mod.weight.copy_(torch.tensor(case["weight"], dtype=torch.float64).reshape(cfg["C"], cfg["D"]))
    return mod


@pytest.mark.parametrize("name", case_names())
@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float32), ("reference", torch.float64)])
def test_golden_steps(name, backend, dtype):
    precision = "float64" if dtype == torch.float64 else "float32"
    case = load_case(f"{name}_{precision}")
    cfg = case["config"]
    mod = module_for(case, dtype, backend)
    tol_loss, tol_grad = (1e-10, 1e-9) if dtype == torch.float64 else (1e-5, 1e-4)
    for i, step in enumerate(case["steps"]):
        # The state before each step is the one the module carried.
        assert mod.ema_state() == pytest.approx(
            (step["batch_mean_before"], step["batch_std_before"]), rel=1e-5
        ), f"step {i}"
        x = torch.tensor(step["features"], dtype=dtype).reshape(cfg["B"], cfg["D"]).requires_grad_()
        y = torch.tensor(step["labels"], dtype=torch.int64)
        mod.weight.grad = None
        loss = mod(x, y)
        loss.backward()
        want_gx = torch.tensor(step["grad_features"], dtype=torch.float64)
        want_gw = torch.tensor(step["grad_weight"], dtype=torch.float64)
        assert abs(float(loss.detach()) - step["loss"]) <= tol_loss * abs(step["loss"]), f"step {i} loss"
        assert rel(x.grad, want_gx) <= tol_grad, f"step {i} grad_features"
        assert rel(mod.weight.grad, want_gw) <= tol_grad, f"step {i} grad_weight"
        assert mod.ema_state() == pytest.approx(
            (step["batch_mean_after"], step["batch_std_after"]), rel=1e-5 if precision == "float32" else 1e-12
        ), f"step {i} EMA"


@pytest.mark.parametrize("margin", adaface_rs.MARGINS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_fused_against_reference(margin, dtype, tol):
    """Fused CPU backend vs the exact reference in float64 on the same (rounded)
    inputs, odd shapes, three steps with the state carried by each module."""
    b, d, c = 37, 29, 131
    kw = dict(margin=margin, m=0.35, m1=0.9, m2=0.2, m3=0.1, t_alpha=0.3)
    fused = adaface_rs.AdaFaceLoss(d, c, dtype=dtype, backend="cpu", **kw)
    ref = adaface_rs.AdaFaceLoss(d, c, dtype=torch.float64, backend="reference", **kw)
    for step in range(3):
        x, w, y = random_inputs(b, d, c, seed=10 + step)
        x, w = x.to(dtype), w.to(dtype)
        with torch.no_grad():
            fused.weight.copy_(w)
            ref.weight.copy_(w.double())
        xf = x.clone().requires_grad_()
        xr = x.double().requires_grad_()
        fused.weight.grad = ref.weight.grad = None
        lf, lr = fused(xf, y), ref(xr, y)
        lf.backward()
        lr.backward()
        assert xf.grad.dtype == dtype and fused.weight.grad.dtype == dtype
        assert abs(lf.item() - lr.item()) <= tol * abs(lr.item())
        assert rel(xf.grad, xr.grad) <= tol * 10
        assert rel(fused.weight.grad, ref.weight.grad) <= tol * 10
        assert fused.ema_state() == pytest.approx(ref.ema_state(), rel=1e-4)
