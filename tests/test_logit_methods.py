"""Logit-level terms (dkd, dist, mlkd, logit standardization, mtkd) and deep mutual learning.

Every value is checked against a formula written here in float64 with plain Python loops, independent of
the code under test; then gradients, low precision, edge cases (2 classes, batch of 1, identical and
all-zero logits) and one short end-to-end run per family.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from kdlab.errors import KDLabError
from kdlab.methods.base import SetupInfo, StepContext
from kdlab.methods.logits import DIST, DecoupledKD, HintonKD, LogitStandardizedKD, MultiLevelKD, MultiTeacherKD
from kdlab.methods.mutual import DeepMutualLearning
from kdlab.registry import TERMS
from kdlab.teacher import TeacherOutput

# ------------------------------------------------------------------------------------------ references


def rows(x):
    return x.double().tolist()


def softmax(v, tau=1.0):
    m = max(v)
    e = [math.exp((a - m) / tau) for a in v]
    z = sum(e)
    return [a / z for a in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def ref_kd(s, t, tau):
    return tau * tau * sum(kl(softmax(ti, tau), softmax(si, tau)) for si, ti in zip(rows(s), rows(t))) / len(s)


def ref_standardize(x):
    out = []
    for r in rows(x):
        n = len(r)
        mean = sum(r) / n
        std = math.sqrt(sum((a - mean) ** 2 for a in r) / (n - 1))
        out.append([(a - mean) / (std + 1e-7) for a in r])
    return torch.tensor(out, dtype=torch.float64)


def ref_dkd(s, t, y, tau, alpha=1.0, beta=8.0):
    """Zhao et al. eq. (TCKD, NCKD): binary (p_gt, 1 - p_gt) KL plus KL of the renormalised non-targets."""
    tckd = nckd = 0.0
    for si, ti, yi in zip(rows(s), rows(t), y.tolist()):
        ps, pt = softmax(si, tau), softmax(ti, tau)
        tckd += kl([pt[yi], 1 - pt[yi]], [ps[yi], 1 - ps[yi]])
        qs = [p / (1 - ps[yi]) for j, p in enumerate(ps) if j != yi]
        qt = [p / (1 - pt[yi]) for j, p in enumerate(pt) if j != yi]
        nckd += kl(qt, qs)
    n = len(s)
    return alpha * tau * tau * tckd / n, beta * tau * tau * nckd / n


def pearson(a, b, eps=1e-8):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    return sum(x * y for x, y in zip(da, db)) / (
        math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)) + eps
    )


def ref_dist(s, t, tau, beta=1.0, gamma=1.0):
    ps = [softmax(r, tau) for r in rows(s)]
    pt = [softmax(r, tau) for r in rows(t)]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt)) / len(ps)
    cols_s = list(zip(*ps))
    cols_t = list(zip(*pt))
    intra = 1 - sum(pearson(a, b) for a, b in zip(cols_s, cols_t)) / len(cols_s)
    return tau * tau * beta * inter, tau * tau * gamma * intra


def ref_mlkd(s, t, temps):
    b, c = s.shape
    inst = bat = cls = 0.0
    for tau in temps:
        inst += ref_kd(s, t, tau)
        ps = [softmax(r, tau) for r in rows(s)]
        pt = [softmax(r, tau) for r in rows(t)]
        for i in range(b):
            for j in range(b):
                gs = sum(ps[i][k] * ps[j][k] for k in range(c))
                gt = sum(pt[i][k] * pt[j][k] for k in range(c))
                bat += (gt - gs) ** 2 / b
        for k in range(c):
            for m in range(c):
                ms = sum(ps[i][k] * ps[i][m] for i in range(b))
                mt = sum(pt[i][k] * pt[i][m] for i in range(b))
                cls += (mt - ms) ** 2 / c
    return inst, bat, cls


# ------------------------------------------------------------------------------------------ helpers


def ctx_for(s, t=None, y=None, *, teacher_outputs=None, peer_logits=None, epoch=0):
    n = s.shape[0]
    y = torch.zeros(n, dtype=torch.long) if y is None else y
    if teacher_outputs is None:
        teacher_outputs = [TeacherOutput(t)] if t is not None else []
    return StepContext(
        x=torch.zeros(n, 1),
        y=y,
        idx=torch.arange(n),
        s_logits=s,
        s_feats={},
        teacher_outputs=[TeacherOutput(x) if isinstance(x, torch.Tensor) else x for x in teacher_outputs],
        peer_logits=list(peer_logits or []),
        epoch=epoch,
        epochs=240,
    )


def logits(batch, classes, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g) * scale


def total(out):
    return sum(v for v in out.values())


TERMS_WITH_TEACHER = [
    lambda: DecoupledKD(DecoupledKD.Params(warmup=0)),
    lambda: DIST(),
    lambda: MultiLevelKD(),
    lambda: LogitStandardizedKD(),
    lambda: HintonKD(HintonKD.Params(standardize=True)),
    lambda: DecoupledKD(DecoupledKD.Params(warmup=0, standardize=True)),
    lambda: DIST(DIST.Params(standardize=True)),
    lambda: MultiLevelKD(MultiLevelKD.Params(standardize=True)),
    lambda: MultiTeacherKD(),
    lambda: MultiTeacherKD(MultiTeacherKD.Params(reduce="sum_kd")),
]
IDS = ["dkd", "dist", "mlkd", "ls_kd", "kd+ls", "dkd+ls", "dist+ls", "mlkd+ls", "mtkd", "mtkd_sum"]


# ------------------------------------------------------------------------------------------ registration


def test_registered_with_description_and_paper():
    for name, paper in [
        ("dkd", "Zhao"),
        ("dist", "Huang"),
        ("mlkd", "Jin"),
        ("ls_kd", "Sun"),
        ("mtkd", "You"),
        ("dml", "Zhang"),
    ]:
        e = TERMS.entry(name)
        assert e.description and paper in e.paper
    assert TERMS.get("dml").needs_teacher is False


# ------------------------------------------------------------------------------------------ DKD


@pytest.mark.parametrize("classes, batch, tau", [(10, 8, 4.0), (5, 1, 1.0), (3, 6, 2.0)])
def test_dkd_matches_reference(classes, batch, tau):
    s, t = logits(batch, classes, 1), logits(batch, classes, 2)
    y = torch.arange(batch) % classes
    out = DecoupledKD(DecoupledKD.Params(tau=tau, warmup=0))(ctx_for(s, t, y))
    want_t, want_n = ref_dkd(s, t, y, tau)
    assert out["tckd"].item() == pytest.approx(want_t, rel=1e-5, abs=1e-6)
    assert out["nckd"].item() == pytest.approx(want_n, rel=1e-5, abs=1e-6)


def log_sigmoid(x):
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


@pytest.mark.parametrize("scale", [1.0, 40.0, 200.0])
def test_dkd_two_classes_is_finite_and_equals_binary_kl(scale):
    """On 2 classes the non-target distribution has one class (NCKD = 0) and TCKD is the full binary KL,
    written here in float64 with log-sigmoids so that saturated logits are fine too."""
    s, t = logits(6, 2, 3, scale), logits(6, 2, 4, scale)
    s[0], t[0] = torch.tensor([scale, -scale]), torch.tensor([-scale, scale])  # opposite, saturated
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    tau = 4.0
    s.requires_grad_()
    out = DecoupledKD(DecoupledKD.Params(tau=tau, warmup=0))(ctx_for(s, t, y))
    want = 0.0
    for si, ti in zip(rows(s.detach()), rows(t)):
        d_s, d_t = (si[0] - si[1]) / tau, (ti[0] - ti[1]) / tau
        lps, lpt = [log_sigmoid(d_s), log_sigmoid(-d_s)], [log_sigmoid(d_t), log_sigmoid(-d_t)]
        want += sum(math.exp(a) * (a - b) for a, b in zip(lpt, lps))
    want *= tau * tau / 6
    assert out["nckd"].item() == 0.0
    assert torch.isfinite(out["tckd"]) and out["tckd"].item() == pytest.approx(want, rel=1e-5)
    total(out).backward()
    assert torch.isfinite(s.grad).all()


def test_dkd_tckd_keeps_fp32_precision_when_p_target_is_small():
    """TCKD from float32 logits against the binary KL computed in float64 with probabilities: with the target
    class ~8 logits below the rest, log(1 - p) as a difference of two logsumexps lost ~6e-5 relative precision;
    log1p keeps it near fp32 rounding."""
    g = torch.Generator().manual_seed(0)
    b, c, tau = 64, 100, 4.0
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (b,), generator=g)
    s[torch.arange(b), y] -= 8.0
    t[torch.arange(b), y] -= 6.0
    p_s = (s / tau).softmax(-1).gather(1, y[:, None])[:, 0]
    p_t = (t / tau).softmax(-1).gather(1, y[:, None])[:, 0]
    want = (p_t * (p_t / p_s).log() + (1 - p_t) * ((1 - p_t) / (1 - p_s)).log()).mean().item() * tau * tau
    out = DecoupledKD(DecoupledKD.Params(tau=tau, warmup=0))(ctx_for(s.float(), t.float(), y))
    assert abs(out["tckd"].item() - want) / want < 2e-6


def test_dkd_identical_logits_and_flat_logits_give_zero():
    s = logits(5, 7, 5)
    y = torch.tensor([0, 3, 6, 2, 2])
    out = DecoupledKD(DecoupledKD.Params(warmup=0))(ctx_for(s, s.clone(), y))
    assert total(out).item() == pytest.approx(0.0, abs=1e-6)
    z = torch.zeros(3, 4)
    out = DecoupledKD(DecoupledKD.Params(warmup=0))(ctx_for(z, z + 2.0, torch.tensor([0, 1, 2])))
    assert total(out).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_warmup_is_linear_over_the_first_epochs():
    s, t = logits(4, 5, 6), logits(4, 5, 7)
    full = total(DecoupledKD(DecoupledKD.Params(warmup=0))(ctx_for(s, t))).item()
    term = DecoupledKD()  # warmup 20
    assert total(term(ctx_for(s, t, epoch=0))).item() == pytest.approx(full / 20, rel=1e-5)
    assert total(term(ctx_for(s, t, epoch=9))).item() == pytest.approx(full / 2, rel=1e-5)
    assert total(term(ctx_for(s, t, epoch=19))).item() == pytest.approx(full, rel=1e-5)
    assert total(term(ctx_for(s, t, epoch=100))).item() == pytest.approx(full, rel=1e-5)


def test_dkd_defaults_are_mdistiller_cifar():
    p = DecoupledKD.Params()
    assert (p.alpha, p.beta, p.tau, p.warmup, p.weight, p.standardize) == (1.0, 8.0, 4.0, 20, 1.0, False)


# ------------------------------------------------------------------------------------------ DIST


@pytest.mark.parametrize("classes, batch, tau", [(10, 8, 1.0), (2, 5, 4.0), (6, 3, 2.0)])
def test_dist_matches_reference(classes, batch, tau):
    s, t = logits(batch, classes, 8), logits(batch, classes, 9)
    out = DIST(DIST.Params(tau=tau, beta=1.5, gamma=0.5))(ctx_for(s, t))
    inter, intra = ref_dist(s, t, tau, 1.5, 0.5)
    assert out["inter"].item() == pytest.approx(inter, rel=1e-4, abs=1e-6)
    assert out["intra"].item() == pytest.approx(intra, rel=1e-4, abs=1e-6)


def test_dist_batch_of_one_drops_intra_and_identical_gives_zero():
    s, t = logits(1, 6, 10), logits(1, 6, 11)
    out = DIST()(ctx_for(s, t))
    assert out["intra"].item() == 0.0
    assert out["inter"].item() == pytest.approx(ref_dist(s, t, 4.0)[0], rel=1e-5)
    s = logits(4, 6, 12)
    assert total(DIST()(ctx_for(s, s.clone()))).item() == pytest.approx(0.0, abs=1e-4)  # tau^2 = 16 x fp32 rounding


def test_dist_defaults_are_the_authors_cifar100_setting():
    p = DIST.Params()
    assert (p.tau, p.weight, p.beta, p.gamma) == (4.0, 2.0, 1.0, 1.0)


def test_dist_all_zero_logits_are_finite_with_finite_gradients():
    s = torch.zeros(4, 5, requires_grad=True)
    out = DIST()(ctx_for(s, torch.zeros(4, 5)))
    total(out).backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------------------------------ MLKD


@pytest.mark.parametrize("classes, batch", [(7, 5), (2, 3), (4, 1)])
def test_mlkd_matches_reference(classes, batch):
    s, t = logits(batch, classes, 13), logits(batch, classes, 14)
    out = MultiLevelKD(MultiLevelKD.Params(level_scale="none", warmup=0))(ctx_for(s, t))  # the authors' formulas
    inst, bat, cls = ref_mlkd(s, t, [2.0, 3.0, 4.0, 5.0, 6.0])
    assert out["instance"].item() == pytest.approx(inst, rel=1e-5, abs=1e-7)
    assert out["batch"].item() == pytest.approx(bat, rel=1e-4, abs=1e-7)
    assert out["class"].item() == pytest.approx(cls, rel=1e-4, abs=1e-7)


def test_mlkd_batch_and_class_levels_are_rescaled_to_the_authors_cifar100_proportions():
    """r = (64 / B)(C / 100): batch level x r, class level x r^2; exactly the authors' formulas at B = 64, C = 100."""
    temps = [2.0, 3.0, 4.0, 5.0, 6.0]
    term = MultiLevelKD(MultiLevelKD.Params(warmup=0))
    s, t = logits(64, 100, 31), logits(64, 100, 32)
    out, (inst, bat, cls) = term(ctx_for(s, t)), ref_mlkd(s, t, temps)
    assert out["batch"].item() == pytest.approx(bat, rel=1e-4) and out["class"].item() == pytest.approx(cls, rel=1e-4)
    s, t = logits(32, 10, 33), logits(32, 10, 34)
    out, (inst, bat, cls) = term(ctx_for(s, t)), ref_mlkd(s, t, temps)
    r = (64 / 32) * (10 / 100)
    assert out["instance"].item() == pytest.approx(inst, rel=1e-5)
    assert out["batch"].item() == pytest.approx(r * bat, rel=1e-4)
    assert out["class"].item() == pytest.approx(r * r * cls, rel=1e-4)


def test_mlkd_warms_up_linearly_and_refuses_few_classes_with_several_temperatures():
    s, t = logits(4, 6, 35), logits(4, 6, 36)
    full = total(MultiLevelKD(MultiLevelKD.Params(warmup=0))(ctx_for(s, t))).item()
    term = MultiLevelKD()  # warm-up 20 epochs, by steps: (epoch + (step + 1) / steps) / 20
    ctx = ctx_for(s, t, epoch=4)
    ctx.step, ctx.steps_per_epoch = 1, 4
    assert total(term(ctx)).item() == pytest.approx(full * 4.5 / 20, rel=1e-5)
    assert total(term(ctx_for(s, t, epoch=25))).item() == pytest.approx(full, rel=1e-5)
    info = SetupInfo(num_train=10, num_classes=2, input_shape=(1,))
    with pytest.raises(KDLabError, match="mlkd: 2 classes.*temperatures"):
        MultiLevelKD().setup({}, {}, info)
    MultiLevelKD(MultiLevelKD.Params(temperatures=[4.0])).setup({}, {}, info)  # one temperature: allowed
    MultiLevelKD().setup({}, {}, SetupInfo(num_train=10, num_classes=5, input_shape=(1,)))


def test_mlkd_level_weights_and_temperatures():
    s, t = logits(4, 5, 15), logits(4, 5, 16)
    out = MultiLevelKD(MultiLevelKD.Params(temperatures=[3.0], w_batch=0.0, w_class=2.0, level_scale="none", warmup=0))(
        ctx_for(s, t)
    )
    inst, _, cls = ref_mlkd(s, t, [3.0])
    assert out["instance"].item() == pytest.approx(inst, rel=1e-5)
    assert out["batch"].item() == 0.0
    assert out["class"].item() == pytest.approx(2 * cls, rel=1e-4)
    with pytest.raises(ValueError):
        MultiLevelKD.Params(temperatures=[])


# ------------------------------------------------------------------------------------------ standardization


@pytest.mark.parametrize("classes, batch", [(10, 6), (2, 4), (5, 1)])
def test_standardized_kd_matches_reference_and_ignores_scale_and_shift(classes, batch):
    s, t = logits(batch, classes, 17), logits(batch, classes, 18)
    term = HintonKD(HintonKD.Params(standardize=True, tau=2.0))
    got = term(ctx_for(s, t))["loss"].item()
    want = ref_kd(ref_standardize(s), ref_standardize(t), 2.0)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # a z-scored logit vector does not change when the logits are scaled (> 0) and shifted
    assert term(ctx_for(s * 3.0 + 5.0, t / 4.0 - 1.0))["loss"].item() == pytest.approx(got, rel=1e-4, abs=1e-6)
    # ls_kd is kd with the switch on, base temperature 2 and weight 9 (Sun et al., CIFAR-100 README)
    ls = LogitStandardizedKD()
    assert (ls.p.tau, ls.p.weight, ls.p.standardize) == (2.0, 9.0, True)
    assert ls(ctx_for(s, t))["loss"].item() == pytest.approx(got, rel=1e-6)


def test_standardize_switch_on_dkd_dist_mlkd_uses_zscored_logits():
    s, t = logits(5, 6, 19), logits(5, 6, 20)
    y = torch.tensor([0, 1, 2, 3, 4])
    zs, zt = ref_standardize(s), ref_standardize(t)
    out = DecoupledKD(DecoupledKD.Params(warmup=0, standardize=True))(ctx_for(s, t, y))
    want_t, want_n = ref_dkd(zs, zt, y, 4.0)
    assert out["tckd"].item() == pytest.approx(want_t, rel=1e-5)
    assert out["nckd"].item() == pytest.approx(want_n, rel=1e-5)
    out = DIST(DIST.Params(standardize=True))(ctx_for(s, t))
    assert out["inter"].item() == pytest.approx(ref_dist(zs, zt, 4.0)[0], rel=1e-4)
    # MLKD: the authors' code z-scores only the instance level
    out = MultiLevelKD(MultiLevelKD.Params(standardize=True, level_scale="none", warmup=0))(ctx_for(s, t))
    temps = [2.0, 3.0, 4.0, 5.0, 6.0]
    assert out["instance"].item() == pytest.approx(sum(ref_kd(zs, zt, tau) for tau in temps), rel=1e-5)
    assert out["batch"].item() == pytest.approx(ref_mlkd(s, t, temps)[1], rel=1e-4)


def test_standardize_constant_logits_are_finite():
    s = torch.full((3, 4), 2.0, requires_grad=True)
    loss = HintonKD(HintonKD.Params(standardize=True))(ctx_for(s, torch.zeros(3, 4)))["loss"]
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------------------------------ multi-teacher


def test_mtkd_mean_probs_matches_reference():
    s, t1, t2, t3 = (logits(6, 8, k) for k in (21, 22, 23, 24))
    tau = 4.0
    out = MultiTeacherKD(MultiTeacherKD.Params(weights=[1.0, 2.0, 1.0]))(ctx_for(s, teacher_outputs=[t1, t2, t3]))
    want = 0.0
    for si, a, b, c in zip(rows(s), rows(t1), rows(t2), rows(t3)):
        pa, pb, pc = softmax(a, tau), softmax(b, tau), softmax(c, tau)
        mix = [(x + 2 * y + z) / 4 for x, y, z in zip(pa, pb, pc)]
        want += kl(mix, softmax(si, tau))
    assert out["loss"].item() == pytest.approx(tau * tau * want / 6, rel=1e-5)


def test_mtkd_sum_kd_matches_reference_and_one_teacher_is_kd():
    s, t1, t2 = (logits(5, 6, k) for k in (25, 26, 27))
    out = MultiTeacherKD(MultiTeacherKD.Params(reduce="sum_kd", weights=[0.3, 0.7]))(
        ctx_for(s, teacher_outputs=[t1, t2])
    )
    assert set(out) == {"teacher0", "teacher1"}
    assert out["teacher0"].item() == pytest.approx(0.3 * ref_kd(s, t1, 4.0), rel=1e-5)
    assert out["teacher1"].item() == pytest.approx(0.7 * ref_kd(s, t2, 4.0), rel=1e-5)
    one = MultiTeacherKD()(ctx_for(s, teacher_outputs=[t1]))["loss"].item()
    assert one == pytest.approx(ref_kd(s, t1, 4.0), rel=1e-5)
    same = MultiTeacherKD()(ctx_for(s, teacher_outputs=[s.clone(), s.clone()]))["loss"].item()
    assert same == pytest.approx(0.0, abs=1e-6)


def test_mtkd_wrong_number_of_weights_is_a_clear_error():
    s = logits(2, 3, 28)
    with pytest.raises(KDLabError, match="one weight per teacher"):
        MultiTeacherKD(MultiTeacherKD.Params(weights=[1.0]))(ctx_for(s, teacher_outputs=[s, s]))
    with pytest.raises(ValueError):
        MultiTeacherKD.Params(weights=[-1.0, 2.0])


# ------------------------------------------------------------------------------------------ DML


def test_dml_matches_reference_and_peers_get_no_gradient():
    s = logits(6, 5, 29).requires_grad_()
    p1 = logits(6, 5, 30).requires_grad_()  # even a peer that still tracks gradients gets none
    p2 = logits(6, 5, 31).requires_grad_()
    loss = DeepMutualLearning()(ctx_for(s, peer_logits=[p1, p2]))["loss"]
    want = (ref_kd(s.detach(), p1.detach(), 1.0) + ref_kd(s.detach(), p2.detach(), 1.0)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert p1.grad is None and p2.grad is None


def test_dml_without_peers_is_a_clear_error_and_identical_is_zero():
    s = logits(3, 4, 32)
    with pytest.raises(KDLabError, match="cohort"):
        DeepMutualLearning()(ctx_for(s))
    assert DeepMutualLearning()(ctx_for(s, peer_logits=[s.clone()]))["loss"].item() == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------------------------------------ common properties


@pytest.mark.parametrize("make", TERMS_WITH_TEACHER, ids=IDS)
def test_gradient_reaches_student_not_teacher(make):
    s = logits(6, 7, 33).requires_grad_()
    t = logits(6, 7, 34)
    t2 = logits(6, 7, 35)
    term = make()
    ctx = (
        ctx_for(s, teacher_outputs=[t, t2]) if isinstance(term, MultiTeacherKD) else ctx_for(s, t, torch.arange(6) % 7)
    )
    total(term(ctx)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert not t.requires_grad and t.grad is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", TERMS_WITH_TEACHER + [lambda: DeepMutualLearning()], ids=IDS + ["dml"])
def test_finite_in_low_precision(make, dtype):
    s = (logits(8, 100, 36) * 10).to(dtype).requires_grad_()
    t = (logits(8, 100, 37) * 10).to(dtype)
    term = make()
    if isinstance(term, DeepMutualLearning):
        ctx = ctx_for(s, peer_logits=[t])
    elif isinstance(term, MultiTeacherKD):
        ctx = ctx_for(s, teacher_outputs=[t, t * 0.5])
    else:
        ctx = ctx_for(s, t, torch.arange(8))
    out = term(ctx)
    total(out).backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("make", TERMS_WITH_TEACHER, ids=IDS)
@pytest.mark.parametrize("batch, classes", [(1, 5), (4, 2), (1, 2)])
def test_edge_shapes_and_identical_and_zero_logits_are_finite(make, batch, classes):
    term = make()
    y = torch.arange(batch) % classes
    for s, t in [
        (logits(batch, classes, 38), logits(batch, classes, 39)),
        (torch.zeros(batch, classes), torch.zeros(batch, classes)),
    ]:
        s = s.clone().requires_grad_()
        ctx = ctx_for(s, teacher_outputs=[t, t]) if isinstance(term, MultiTeacherKD) else ctx_for(s, t, y)
        out = term(ctx)
        total(out).backward()
        assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(s.grad).all()
    s = logits(batch, classes, 40)
    ctx = ctx_for(s, teacher_outputs=[s.clone()]) if isinstance(term, MultiTeacherKD) else ctx_for(s, s.clone(), y)
    out = term(ctx)
    if not isinstance(term, DIST):  # DIST: a constant row (2 classes at batch 1 etc.) has correlation 0
        assert total(out).item() == pytest.approx(0.0, abs=1e-5)


def test_mismatched_classes_are_a_clear_error():
    with pytest.raises(KDLabError, match="same classes"):
        DecoupledKD()(ctx_for(logits(2, 3, 41), logits(2, 4, 42)))


# ------------------------------------------------------------------------------------------ end to end


def smoke_recipe(out, objective, **extra):
    from kdlab.recipe import load_recipe

    data = {
        "name": "smoke",
        "out": str(out),
        "seed": 0,
        "data": {"name": "digits", "batch_size": 256},
        "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
        "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
        "objective": objective,
        "schedule": {"epochs": 1, "milestones": []},
        "train": {"tensorboard": False},
    }
    data.update(extra)
    return load_recipe(data)


def last_metrics(out):
    lines = (out / "smoke" / "seed0" / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def test_logit_terms_train_end_to_end(tmp_path):
    from kdlab.engine import run_recipe

    class Spy:  # the frozen teacher's parameters never get a gradient
        grads: list = []

        def on_step_end(self, trainer, state):
            self.grads += [p.grad for p in trainer.teachers[0].model.parameters()]

    spy = Spy()
    objective = {"ce": {"weight": 0.1}, "dkd": {}, "dist": {}, "mlkd": {}, "ls_kd": {}, "kd": {"standardize": True}}
    run_recipe(smoke_recipe(tmp_path, objective), callbacks=[spy], quiet=True)
    assert spy.grads and all(g is None for g in spy.grads)
    m = last_metrics(tmp_path)
    for key in [
        "train/ce",
        "train/dkd/tckd",
        "train/dkd/nckd",
        "train/dist/inter",
        "train/dist/intra",
        "train/mlkd/instance",
        "train/mlkd/batch",
        "train/mlkd/class",
        "train/ls_kd",
        "train/kd",
    ]:
        assert key in m and math.isfinite(m[key]), key


def test_multi_teacher_trains_end_to_end(tmp_path):
    from kdlab.engine import run_recipe

    teachers = [
        {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
        {"model": {"name": "smallcnn", "kwargs": {"width": 0.25}}},
    ]
    objective = {"ce": {"weight": 0.1}, "mtkd": {}, "per": {"term": "mtkd", "reduce": "sum_kd", "weights": [1, 1]}}
    run_recipe(smoke_recipe(tmp_path, objective, teacher=teachers), quiet=True)
    m = last_metrics(tmp_path)
    for key in ["train/mtkd", "train/per/teacher0", "train/per/teacher1"]:
        assert key in m and math.isfinite(m[key]), key


def test_dml_trains_two_students_in_one_loop(tmp_path):
    from kdlab.data import build_dataset
    from kdlab.engine import run_recipe
    from kdlab.engine.run import build_model_for

    r = smoke_recipe(
        tmp_path, {"ce": {}, "dml": {}}, teacher=None, cohort=[{"name": "smallcnn", "kwargs": {"width": 0.25}}]
    )
    run_recipe(r, quiet=True)
    d = tmp_path / "smoke" / "seed0"
    m = last_metrics(tmp_path)
    assert math.isfinite(m["train/dml"]) and m["train/dml"] > 0 and "cohort1/test/top1" in m
    # both students changed from their initialisation (the run builds [student, *cohort] after seeding)
    ds = build_dataset("digits")
    torch.manual_seed(r.seed)
    init = [build_model_for(spec, ds).state_dict() for spec in [r.student, *r.cohort]]
    for k, f in enumerate(["student.safetensors", "cohort1.safetensors"]):
        w = load_file(str(d / f))
        assert any(not torch.equal(w[n], init[k][n]) for n in w if w[n].is_floating_point()), f


def test_mlkd_with_its_defaults_no_longer_sends_a_digits_student_to_chance(tmp_path):
    """The digits pair (smallcnn x1 teacher -> x0.25 student, lr 0.05, 30 epochs) with recipes/methods/mlkd.yaml's
    objective: the authors' unscaled, unwarmed levels left the student at 10 % top-1 from epoch 1 (issue 15)."""
    from kdlab.engine import run_recipe
    from kdlab.recipe import load_recipe

    base = {
        "out": str(tmp_path),
        "data": {"name": "digits"},
        "train": {"tensorboard": False},
        "schedule": {"epochs": 30, "milestones": [15, 22]},
    }
    run_recipe(
        load_recipe(
            {
                **base,
                "name": "teacher",
                "student": {"name": "smallcnn"},
                "schedule": {"epochs": 8, "milestones": []},
                "objective": {"ce": {}},
            }
        ),
        quiet=True,
    )
    from pathlib import Path

    import yaml

    objective = yaml.safe_load((Path(__file__).parents[1] / "recipes/methods/mlkd.yaml").read_text())["objective"]
    data = {
        **base,
        "name": "mlkd",
        "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
        "teacher": {"run": str(tmp_path / "teacher" / "seed0")},
        "objective": objective,
    }
    summary = run_recipe(load_recipe(data), quiet=True)
    assert summary["final"]["test/top1"] > 0.9
