"""Backward-pass auxiliary samples (view ``backward``): ascent sign, projection, step sizes, network hygiene,
the random-direction control, the offline schedule and the documented cost, on tiny random CNNs."""

from __future__ import annotations

from types import SimpleNamespace

import pydantic
import pytest
import torch
from torch import nn

from kdlab.data.base import Split
from kdlab.errors import KDLabError
from kdlab.registry import VIEWS
from kdlab.teacher import Teacher
from kdlab.views import normalize
from kdlab.views.backward import Backward, ascend, divergence
from kdlab.views.extra import ViewInput

MEAN, STD = 0.5, 0.25
LO = torch.full((1, 1, 1, 1), (0.0 - MEAN) / STD)  # -2
HI = torch.full((1, 1, 1, 1), (1.0 - MEAN) / STD)  # +2
WIDE_LO, WIDE_HI = LO - 100, HI + 100  # bounds that never bind


class Net(nn.Module):
    """Conv + BatchNorm + dropout + linear: enough to expose BN-buffer, dropout and mode mistakes."""

    def __init__(self, width: int, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.avg_pool2d(h, 2)
        return self.fc(self.drop(h.flatten(1)))


def _pair(seed: int = 0) -> tuple[Teacher, Net]:
    t = Net(12, seed=seed + 100)
    s = Net(4, seed=seed + 200)
    # non-trivial BN running stats, so that eval-mode generation differs from train-mode
    with torch.no_grad():
        for m in (t, s):
            m.train()
            m(torch.randn(64, 1, 8, 8) * 1.5 + 0.3)
    return Teacher(t), s


def _batch(n: int = 32, seed: int = 1, lo: float = 0.2, hi: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = lo + (hi - lo) * torch.rand(n, 1, 8, 8, generator=g)
    return normalize(raw, [MEAN], [STD])


def _inp(teacher, student, x, *, seed=0, lo=LO, hi=HI, epoch=0, data=None) -> ViewInput:
    n = len(x)
    return ViewInput(
        x=x,
        y=torch.arange(n) % 5,
        idx=torch.arange(100, 100 + n),
        gen=torch.Generator().manual_seed(seed),
        teacher=teacher,
        student=student,
        lo=lo,
        hi=hi,
        epoch=epoch,
        data=data,
    )


def _d(teacher: Teacher, student: nn.Module, x: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """Independent D: both networks in eval mode, no grad."""
    was = student.training
    student.eval()
    with torch.no_grad():
        out = divergence(teacher(x).logits, student(x), tau)
    student.train(was)
    return out


def _div_fn(teacher: Teacher, student: nn.Module, tau: float = 4.0):
    student.eval()
    return lambda x: divergence(teacher.forward_grad(x).logits, student(x), tau)


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(len(v), -1).pow(2).mean(1).sqrt()


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(len(v), -1).norm(dim=1)


# ---------------------------------------------------------------------------------------------- params
def test_registered_with_defaults_and_validation():
    assert VIEWS.get("backward") is Backward and Backward.kind == "extra"
    assert "2301.12006" in VIEWS.entry("backward").paper
    p = Backward.Params()
    assert (p.weight, p.tau, p.steps, p.eta, p.step_rule) == (0.25, 4.0, 1, 0.1, "l2")
    assert (p.ball, p.eps, p.direction, p.schedule, p.fraction) == (None, None, "gradient", "online", 1.0)
    assert p.targets == "teacher"
    for bad in (
        {"ball": "l2"},
        {"eps": 0.1},
        {"targets": "labels"},
        {"steps": 0},
        {"etaa": 0.1},
        {"fraction": 1.5},
        {"step_rule": "l1"},
    ):
        with pytest.raises(pydantic.ValidationError):
            Backward.Params(**bad)
    assert Backward({"steps": 3, "ball": "linf", "eps": 0.2}).p.steps == 3


# ---------------------------------------------------------------------------------------------- sign of the step
@pytest.mark.parametrize("rule", ["l2", "sign"])
def test_one_small_step_ascends_and_descent_descends(rule):
    teacher, student = _pair()
    x = _batch(64)
    view = Backward({"steps": 1, "eta": 0.01, "step_rule": rule})
    out = view(_inp(teacher, student, x))
    d0, d1 = _d(teacher, student, x), _d(teacher, student, out.x)
    assert (d1 > d0).float().mean() >= 0.9
    assert out.stats["d_before"] == pytest.approx(float(d0.mean()), rel=1e-4)
    assert out.stats["d_after"] == pytest.approx(float(d1.mean()), rel=1e-4)
    # the same function with the sign flipped decreases D for most samples
    down = ascend(x, _div_fn(teacher, student), view.p, LO, HI, None, ascent=False).x
    assert (_d(teacher, student, down) < d0).float().mean() >= 0.9
    # and a larger ascent budget moves D up further on average
    big = Backward({"steps": 3, "eta": 0.3, "step_rule": rule})(_inp(teacher, student, x))
    assert big.stats["d_after"] > out.stats["d_after"] > out.stats["d_before"]


# ---------------------------------------------------------------------------------------------- projection
def test_clip_and_balls_hold():
    teacher, student = _pair()
    x = _batch(48, lo=0.0, hi=1.0)
    lo_b, hi_b = LO.expand(1, 1, 8, 8), HI.expand(1, 1, 8, 8)
    out = Backward({"steps": 3, "eta": 3.0})(_inp(teacher, student, x))
    assert (out.x >= LO).all() and (out.x <= HI).all()
    at_bounds = ((out.x <= lo_b) | (out.x >= hi_b)).float().mean()
    assert out.stats["clipped"] == pytest.approx(float(at_bounds)) and out.stats["clipped"] > 0.05
    for rule in ("l2", "sign", "raw"):
        for ball, eps in (("l2", 0.5), ("linf", 0.05)):
            o = Backward({"steps": 3, "eta": 2.0, "step_rule": rule, "ball": ball, "eps": eps})(
                _inp(teacher, student, x)
            )
            assert (o.x >= LO).all() and (o.x <= HI).all()
            delta = o.x - x
            size = _norm(delta) if ball == "l2" else delta.abs().reshape(len(x), -1).amax(1)
            assert (size <= eps + 1e-6).all(), (rule, ball, float(size.max()))
            if rule != "raw":  # raw steps scale with |g| (tiny here); l2/sign steps are far outside the ball
                assert float(size.min()) > 0.5 * eps  # the ball binds, it is not a no-op


# ---------------------------------------------------------------------------------------------- step size
def test_l2_rule_rms_per_step_is_eta_over_k():
    teacher, student = _pair()
    x = _batch(32)
    p = Backward.Params(steps=3, eta=0.3)
    res = ascend(x, _div_fn(teacher, student), p, WIDE_LO, WIDE_HI, None, record=True)
    assert len(res.steps) == 3
    for s in res.steps:
        torch.testing.assert_close(_rms(s), torch.full((32,), 0.1), rtol=1e-5, atol=0)
    torch.testing.assert_close(res.x - x, sum(res.steps), rtol=1e-5, atol=1e-6)  # nothing was projected
    # through the view (K=1, unclipped): the per-sample L2 distance is eta·sqrt(d)
    out = Backward({"eta": 0.1})(_inp(teacher, student, x, lo=WIDE_LO, hi=WIDE_HI))
    assert out.stats["l2"] == pytest.approx(0.1 * 8, rel=1e-5) and out.stats["clipped"] == 0.0
    # sign rule: every element with a non-zero gradient moves by exactly eta/K per step
    res = ascend(
        x, _div_fn(teacher, student), Backward.Params(steps=2, eta=0.2, step_rule="sign"), None, None, record=True
    )
    for s, g in zip(res.steps, res.grads):
        assert (g != 0).float().mean() > 0.9
        torch.testing.assert_close(s.abs(), 0.1 * (g != 0).float())


def test_mask_freezes_elements_for_embedding_style_inputs():
    teacher, student = _pair()
    x = _batch(16)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1  # e.g. real tokens vs padding
    res = ascend(x, _div_fn(teacher, student), Backward.Params(eta=0.1), None, None, mask=mask, record=True)
    assert torch.equal(res.x[..., 4:], x[..., 4:])
    active = res.steps[0][..., :4]
    torch.testing.assert_close(_rms(active), torch.full((16,), 0.1), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------- hygiene
def test_networks_untouched_no_grads_and_modes_restored():
    teacher, student = _pair()
    student.train()
    student.drop.eval()  # a per-module flag that a blanket .train() would overwrite
    t_state = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    s_state = {k: v.clone() for k, v in student.state_dict().items()}
    x = _batch(32)
    for schedule in ("online", "offline"):
        data = SimpleNamespace(
            split=Split(torch.rand(40, 1, 8, 8), torch.arange(40) % 5), prepare=lambda r: normalize(r, [MEAN], [STD])
        )
        out = Backward({"steps": 2, "eta": 0.2, "schedule": schedule})(_inp(teacher, student, x, data=data))
        assert not out.x.requires_grad and out.teacher is not None
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, t_state[k]), k
    for k, v in student.state_dict().items():
        assert torch.equal(v, s_state[k]), k
    assert all(p.grad is None for p in list(student.parameters()) + list(teacher.model.parameters()))
    assert student.training and student.conv.training and student.bn.training and not student.drop.training
    assert not teacher.model.training
    # the returned teacher output is the teacher's (eval-mode) output on exactly x_aux
    torch.testing.assert_close(out.teacher.logits, teacher(out.x).logits)


def test_generation_uses_eval_mode():
    # train-mode BN would use batch statistics: D must match the eval-mode computation
    teacher, student = _pair()
    student.train()
    x = _batch(32)
    out = Backward({"eta": 0.0})(_inp(teacher, student, x))
    torch.testing.assert_close(out.x, x)
    assert out.stats["d_before"] == pytest.approx(float(_d(teacher, student, x).mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------------- control
@pytest.mark.parametrize("rule", ["l2", "sign", "raw"])
def test_random_control_same_norm_different_direction(rule):
    teacher, student = _pair()
    x = _batch(32)
    grad_p = Backward.Params(steps=2, eta=0.2, step_rule=rule)
    rand_p = Backward.Params(steps=2, eta=0.2, step_rule=rule, direction="random")
    fn = _div_fn(teacher, student)
    a = ascend(x, fn, grad_p, WIDE_LO, WIDE_HI, torch.Generator().manual_seed(0), record=True)
    b = ascend(x, fn, rand_p, WIDE_LO, WIDE_HI, torch.Generator().manual_seed(0), record=True)
    # first step: same start, so the gradient steps have to be equal in norm (pre-projection)
    torch.testing.assert_close(_norm(b.steps[0]), _norm(a.steps[0]), rtol=1e-5, atol=1e-8)
    for s, g in zip(b.steps, b.grads):
        cos = (s.flatten(1) * g.flatten(1)).sum(1) / (_norm(s) * _norm(g))
        assert cos.abs().mean() < 0.3  # not the gradient direction
    cos_a = (a.steps[0].flatten(1) * a.grads[0].flatten(1)).sum(1) / (_norm(a.steps[0]) * _norm(a.grads[0]))
    assert (cos_a > 0.5).all()  # the gradient variant does follow the gradient
    # the view: same distance travelled, smaller divergence gain than the gradient direction
    g_out = Backward({"steps": 1, "eta": 0.1})(_inp(teacher, student, x, lo=WIDE_LO, hi=WIDE_HI))
    r_out = Backward({"steps": 1, "eta": 0.1, "direction": "random"})(_inp(teacher, student, x, lo=WIDE_LO, hi=WIDE_HI))
    assert r_out.stats["l2"] == pytest.approx(g_out.stats["l2"], rel=1e-5)
    g_gain = g_out.stats["d_after"] - g_out.stats["d_before"]
    assert g_gain > 2 * abs(r_out.stats["d_after"] - r_out.stats["d_before"])


def test_random_control_norm_matches_at_every_step():
    teacher, student = _pair()
    x = _batch(16)
    p = Backward.Params(steps=3, eta=0.3, step_rule="raw", direction="random")
    res = ascend(x, _div_fn(teacher, student), p, WIDE_LO, WIDE_HI, torch.Generator().manual_seed(3), record=True)
    for s, g in zip(res.steps, res.grads):
        torch.testing.assert_close(_norm(s), _norm(0.1 * g), rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------- schedules
class _Counter:
    def __init__(self, *modules: nn.Module):
        self.n = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, *_):
        self.n += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def test_offline_regenerates_every_e_epochs_and_draws_rho_b():
    teacher, student = _pair()
    raw = torch.rand(40, 1, 8, 8)
    split = Split(raw, torch.arange(40) % 5)
    data = SimpleNamespace(split=split, prepare=lambda r: normalize(r, [MEAN], [STD]))
    view = Backward({"schedule": "offline", "every": 3, "ratio": 0.5})
    b = 8
    s_count = _Counter(student)
    sizes, gens_at_step = [], []
    for epoch in range(8):
        for step in range(3):
            before = view.generations
            s_count.n = 0
            out = view(
                _inp(
                    teacher, student, _batch(b, seed=epoch * 10 + step), seed=epoch * 10 + step, epoch=epoch, data=data
                )
            )
            sizes.append(len(out.x))
            gens_at_step.append(view.generations - before)
            if view.generations == before:
                assert s_count.n == 0  # no generation, no student pass
            # drawn rows come from the stored set; labels/idx are the source samples'
            aux = view._aux
            match = (out.x[:, None] == aux["x"][None]).flatten(2).all(2)
            assert match.any(1).all()
            torch.testing.assert_close(out.y, split.y[out.idx])
            assert set(out.stats) == {"d_before", "d_after", "clipped", "clipped_start", "l2"}
    s_count.remove()
    assert view.generations == 3 and view.generated_at == [0, 3, 6]
    assert sum(gens_at_step) == 3 and gens_at_step[0] == 1 and gens_at_step[9] == 1 and gens_at_step[18] == 1
    assert sizes == [4] * 24  # round(0.5 · 8)
    assert len(view._aux["x"]) == 40 and torch.equal(view._aux["idx"], torch.arange(40))
    # each regenerated sample lies within the budget of its (normalised) source
    dist = _norm(view._aux["x"] - normalize(raw, [MEAN], [STD]))
    assert (dist <= 0.1 * 8 + 1e-5).all()
    # a new stage (epoch counter back to 0, or another student) regenerates at once
    view(_inp(teacher, student, _batch(b), epoch=0, data=data))
    view(_inp(teacher, Net(4, seed=7), _batch(b), epoch=1, data=data))
    assert view.generated_at == [0, 3, 6, 0, 1]
    # ratio > 1 draws more than the set would give without replacement; fraction shrinks the set
    big = Backward({"schedule": "offline", "ratio": 6.0, "fraction": 0.5})
    out = big(_inp(teacher, student, _batch(b), data=data))
    assert len(out.x) == 48 and len(big._aux["x"]) == 20
    with pytest.raises(KDLabError):
        Backward({"schedule": "offline"})(_inp(teacher, student, _batch(b)))


def test_online_fraction_and_needs_teacher():
    teacher, student = _pair()
    x = _batch(32)
    inp = _inp(teacher, student, x)
    out = Backward({"fraction": 0.25})(inp)
    assert len(out.x) == 8 and len(out.idx) == 8 and len(out.y) == 8
    pos = out.idx - 100
    assert torch.equal(out.y, inp.y[pos])
    assert (_norm(out.x - x[pos]) <= 0.8 + 1e-5).all()
    with pytest.raises(KDLabError):
        Backward()(_inp(None, student, x))


# ---------------------------------------------------------------------------------------------- cost
@pytest.mark.parametrize("k", [1, 3])
def test_cost_matches_docstring(k):
    teacher, student = _pair()
    x = _batch(16)
    t_count, s_count = _Counter(teacher.model), _Counter(student)
    Backward({"steps": k})(_inp(teacher, student, x))
    # K forward+backward through both + 1 teacher forward (targets) + 1 no-grad student forward (d_after)
    assert (t_count.n, s_count.n) == (k + 1, k + 1)
    t_count.n = s_count.n = 0
    Backward({"steps": k, "stats_pass": False, "direction": "random"})(_inp(teacher, student, x))
    assert (t_count.n, s_count.n) == (k + 1, k)
    t_count.remove()
    s_count.remove()
