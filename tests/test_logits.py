"""CE and Hinton KD against formulas written here, independently of the code under test."""

import math

import pytest
import torch

from kdlab.methods.base import StepContext
from kdlab.methods.logits import CrossEntropy, HintonKD
from kdlab.teacher import TeacherOutput


def ctx_for(s, t, y):
    return StepContext(
        x=torch.zeros(len(y), 1),
        y=y,
        idx=torch.arange(len(y)),
        s_logits=s,
        s_feats={},
        teacher_outputs=[TeacherOutput(t)],
    )


def reference_kd(s, t, tau):
    """tau^2 * mean_i sum_c p_t log(p_t / p_s), with explicit exponentials, in float64."""
    total = 0.0
    for si, ti in zip(s.double().tolist(), t.double().tolist()):
        zs = [math.exp(v / tau) for v in si]
        zt = [math.exp(v / tau) for v in ti]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return tau * tau * total / len(s)


@pytest.mark.parametrize("classes, batch, tau", [(10, 8, 4.0), (2, 5, 1.0), (3, 1, 2.5)])
def test_kd_matches_reference(classes, batch, tau):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(batch, classes, generator=g) * 3, torch.randn(batch, classes, generator=g) * 3
    term = HintonKD(HintonKD.Params(tau=tau))
    got = term(ctx_for(s, t, torch.zeros(batch, dtype=torch.long)))["loss"]
    assert got.item() == pytest.approx(reference_kd(s, t, tau), rel=1e-5, abs=1e-6)


def test_kd_is_zero_for_identical_and_equal_logits():
    s = torch.randn(4, 6)
    term = HintonKD()
    assert term(ctx_for(s, s.clone(), torch.zeros(4, dtype=torch.long)))["loss"].item() == pytest.approx(0, abs=1e-7)
    flat = torch.full((3, 5), 2.0)
    assert term(ctx_for(flat, flat + 7, torch.zeros(3, dtype=torch.long)))["loss"].item() == pytest.approx(0, abs=1e-6)


def test_kd_gradient_reaches_student_only():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    HintonKD()(ctx_for(s, t.detach(), torch.zeros(4, dtype=torch.long)))["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kd_finite_in_low_precision(dtype):
    s = (torch.randn(8, 100) * 30).to(dtype).requires_grad_()
    t = (torch.randn(8, 100) * 30).to(dtype)
    loss = HintonKD()(ctx_for(s, t, torch.zeros(8, dtype=torch.long)))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_ce_matches_reference():
    s = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    want = sum(-(s[i, y[i]] - torch.logsumexp(s[i], 0)).item() for i in range(6)) / 6
    assert CrossEntropy()(ctx_for(s, s, y))["loss"].item() == pytest.approx(want, rel=1e-6)
