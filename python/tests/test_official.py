"""Drop-in check against the official AdaFace head (github mk-minchul/AdaFace,
head.py; not part of this repository): with $ADAFACE_OFFICIAL_HEAD naming a
copy of it, both heads run on the same inputs and weights for several steps,
and the loss, both gradients and the EMA state must agree to 1e-5 relative
in float32. Without it the test is skipped, and says so."""

from __future__ import annotations

import pytest
import torch

import adaface_rs
from conftest import official_head_module, rel


@pytest.mark.parametrize("t_alpha", [1.0, 0.01])
@pytest.mark.parametrize("shape", [(31, 64, 211), (64, 128, 1000)])
def test_drop_in_against_official_head(shape, t_alpha):
    official = official_head_module()
    if official is None:
        pytest.skip("ADAFACE_OFFICIAL_HEAD is not set: drop-in test against the official head skipped")
    b, d, c = shape
    torch.manual_seed(1)
    theirs = official.AdaFace(embedding_size=d, classnum=c, m=0.4, h=0.333, s=64.0, t_alpha=t_alpha)
    ours = adaface_rs.AdaFaceLoss(d, c, m=0.4, h=0.333, s=64.0, t_alpha=t_alpha)
    ours.load_official_state_dict(theirs.state_dict())
    ce = torch.nn.CrossEntropyLoss()
    for step in range(4):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(b, d, generator=g) * torch.empty(b, 1).uniform_(1.0, 60.0, generator=g)
        y = torch.randint(0, c, (b,), generator=g)
        theirs.kernel.grad = None
        ours.weight.grad = None
        xa = x.clone().requires_grad_()
        norms = torch.norm(xa, 2, 1, True)
        la = ce(theirs(xa / norms, norms, y), y)
        la.backward()
        xb = x.clone().requires_grad_()
        lb = ours(xb, y)
        lb.backward()
        assert abs(float(lb) - float(la)) <= 1e-5 * abs(float(la)), f"step {step} loss"
        assert rel(xb.grad, xa.grad) <= 1e-5, f"step {step} dx"
        assert rel(ours.weight.grad, theirs.kernel.grad.t()) <= 1e-5, f"step {step} dW"
        assert ours.ema_state() == pytest.approx(
            (float(theirs.batch_mean), float(theirs.batch_std)), rel=1e-5
        ), f"step {step} EMA"
