"""CUDA tensors: the crate's CUDA backend on torch's stream and memory.
Skipped, with the reason shown, where no GPU is visible."""

from __future__ import annotations

import pytest
import torch

import adaface_rs
from conftest import load_case, random_inputs, rel

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch: CUDA tests skipped"),
    pytest.mark.skipif(not adaface_rs.cuda_compiled(), reason="adaface_rs built without the CUDA backend"),
]


@pytest.mark.parametrize("name", ["a_small_default", "c_m075_h022_s30", "f_large", "i_scaler_clip"])
def test_cuda_golden_steps(name):
    case = load_case(f"{name}_float32")
    cfg = case["config"]
    mod = adaface_rs.AdaFaceLoss(cfg["D"], cfg["C"], m=cfg["m"], h=cfg["h"], s=cfg["s"], t_alpha=cfg["t_alpha"]).cuda()
    with torch.no_grad():
        mod.weight.copy_(torch.tensor(case["weight"]).reshape(cfg["C"], cfg["D"]))
    for i, step in enumerate(case["steps"]):
        x = torch.tensor(step["features"]).reshape(cfg["B"], cfg["D"]).cuda().requires_grad_()
        y = torch.tensor(step["labels"], dtype=torch.int64).cuda()
        mod.weight.grad = None
        loss = mod(x, y)
        loss.backward()
        assert loss.device.type == "cuda" and mod.batch_mean.device.type == "cuda"
        assert abs(float(loss) - step["loss"]) <= 1e-4 * abs(step["loss"]), f"step {i}"
        assert rel(x.grad.cpu(), torch.tensor(step["grad_features"])) <= 1e-3, f"step {i}"
        assert rel(mod.weight.grad.cpu(), torch.tensor(step["grad_weight"])) <= 1e-3, f"step {i}"
        assert mod.ema_state() == pytest.approx((step["batch_mean_after"], step["batch_std_after"]), rel=1e-4)
        assert mod.check_last_step() == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_cuda_against_cpu_reference(dtype, tol):
    b, d, c = 37, 64, 1031
    cpu = adaface_rs.AdaFaceLoss(d, c, dtype=torch.float64, t_alpha=0.3, backend="reference")
    gpu = adaface_rs.AdaFaceLoss(d, c, dtype=dtype, t_alpha=0.3).cuda()
    stream = torch.cuda.Stream()
    for step in range(3):
        x, w, y = random_inputs(b, d, c, seed=30 + step)
        x, w = x.to(dtype), w.to(dtype)
        with torch.no_grad():
            cpu.weight.copy_(w.double())
            gpu.weight.copy_(w.cuda())
        xr = x.double().requires_grad_()
        cpu.weight.grad = gpu.weight.grad = None
        lr = cpu(xr, y)
        lr.backward()
        xg = x.cuda().requires_grad_()
        # A side stream on the last step: the head launches on torch's current stream.
        ctx = torch.cuda.stream(stream) if step == 2 else torch.cuda.stream(torch.cuda.current_stream())
        yg = y.cuda()
        stream.wait_stream(torch.cuda.current_stream())
        with ctx:
            lg = gpu(xg, yg)
            lg.backward()
        torch.cuda.synchronize()
        assert xg.grad.dtype == dtype
        assert abs(float(lg) - float(lr)) <= tol * abs(float(lr))
        assert rel(xg.grad.cpu(), xr.grad) <= 10 * tol
        assert rel(gpu.weight.grad.cpu(), cpu.weight.grad) <= 10 * tol
        assert gpu.ema_state() == pytest.approx(cpu.ema_state(), rel=1e-4)


def test_cuda_errors_reported_state_unchanged():
    b, d, c = 9, 32, 50
    x, w, y = random_inputs(b, d, c, seed=40)
    mod = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5).cuda()
    mod(x.cuda(), y.cuda())
    before = mod.ema_state()
    y[2] = c + 3
    loss = mod(x.cuda(), y.cuda())
    with pytest.raises(ValueError, match="outside"):
        mod.check_last_step()
    assert torch.isnan(loss)
    assert mod.ema_state() == before


def test_cuda_eval_and_state_dict():
    b, d, c = 8, 16, 20
    x, w, y = random_inputs(b, d, c, seed=41)
    mod = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5).cuda()
    mod(x.cuda(), y.cuda())
    before = mod.ema_state()
    with torch.no_grad():
        mod(x.cuda() * 3, y.cuda())
    assert mod.ema_state() == before
    other = adaface_rs.AdaFaceLoss(d, c, t_alpha=0.5)
    other.load_state_dict({k: v.cpu() for k, v in mod.state_dict().items()})
    assert other.ema_state() == before


@pytest.mark.parametrize("policy", ["sphereface", "curricularface", "magface"])
def test_cuda_margin_family_matches_the_torch_oracle(policy):
    """The non-affine policies on CUDA tensors, three steps: loss, both
    gradients and CurricularFace's ``t`` (kept on the device, copied through
    the module's buffer) against the plain-torch oracle of test_margins."""
    from test_margins import PARAMS, oracle

    b, d, c = 9, 64, 130
    mod = adaface_rs.AdaFaceLoss(d, c, margin=policy, s=16.0, **PARAMS[policy]).cuda()
    t = 0.0
    for step in range(3):
        x, w, y = random_inputs(b, d, c, seed=300 + step, dtype=torch.float64)
        with torch.no_grad():
            mod.weight.copy_(w.float())
        mod.weight.grad = None
        xr = x.float().cuda().requires_grad_()
        loss = mod(xr, y.cuda())
        loss.backward()
        xo, wo = x.clone().requires_grad_(), w.clone().requires_grad_()
        want, t = oracle(policy, xo, wo, y, 16.0, PARAMS[policy], t_before=t)
        want.backward()
        assert abs(float(loss) - float(want)) <= 1e-4 * max(1.0, abs(float(want))), step
        assert rel(xr.grad.cpu().double(), xo.grad) <= 1e-3, step
        assert rel(mod.weight.grad.cpu().double(), wo.grad) <= 1e-3, step
        if policy == "curricularface":
            assert mod.curricular_t.device.type == "cuda"
            assert abs(float(mod.curricular_t) - t) <= 1e-5, (step, float(mod.curricular_t), t)
