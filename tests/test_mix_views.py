"""Mixing extra views (mixup, cutmix, cutout, cutmix_pick): checked against independent computations."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from torch import nn

from kdlab.registry import VIEWS
from kdlab.teacher import Teacher
from kdlab.views.extra import ViewInput
from kdlab.views.mix import CutMix, CutMixPick, Cutout, Mixup, beta, cut_sides, derangement, rand_box


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inp(x: torch.Tensor, seed: int = 0, teacher=None, student=None, y=None) -> ViewInput:
    n = len(x)
    return ViewInput(
        x=x,
        y=torch.arange(n) if y is None else y,
        idx=torch.arange(100, 100 + n),
        gen=_gen(seed),
        teacher=teacher,
        student=student if student is not None else nn.Identity(),
        lo=torch.zeros(1),
        hi=torch.ones(1),
    )


def _constant_images(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    # sample i is the constant i + 1: every pixel differs from every other sample's
    return (torch.arange(n, dtype=torch.float32) + 1).reshape(n, *([1] * len(shape))).expand(n, *shape).clone()


class Net(nn.Module):
    """A tiny conv net for N×C×H×W (dims=2) or N×C×L (dims=1), with an optional BatchNorm."""

    def __init__(self, c: int = 3, classes: int = 5, dims: int = 2, bn: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        pool = nn.AdaptiveAvgPool2d(2) if dims == 2 else nn.AdaptiveAvgPool1d(4)
        self.body = nn.Sequential(
            conv(c, 6, 3, padding=1), norm(6) if bn else nn.Identity(), nn.Tanh(), pool, nn.Flatten()
        )
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        return self.fc(self.body(x))


class CountingTeacher(Teacher):
    """Records the batch size of every call (the engine's samples_seen, measured from outside)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[int] = []

    def __call__(self, x):
        self.calls.append(len(x))
        return super().__call__(x)


def _entropy_ref(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.double(), dim=1)
    return -(p * torch.log(p)).sum(dim=1)


def _kl_ref(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    pt = torch.softmax(t.double() / tau, dim=1)
    ps = torch.softmax(s.double() / tau, dim=1)
    return (pt * (torch.log(pt) - torch.log(ps))).sum(dim=1)


def _replay_pool(x: torch.Tensor, seed: int, m: int, **cut) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """The CutMixPick pool rebuilt from m cutmix calls on a generator seeded the same way."""
    inp = _inp(x, seed)
    view = CutMix(CutMix.Params(**cut))
    parts = [view(inp) for _ in range(m)]
    pool_x = torch.cat([p.x for p in parts])
    pool_idx = torch.cat([p.idx for p in parts])
    y_mix = tuple(torch.cat([p.y_mix[i] for p in parts]) for i in range(3))
    return pool_x, pool_idx, y_mix


def _topk_set(scores: torch.Tensor, k: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return sorted(order[:k])


# ----------------------------------------------------------------------------------------------- registry
def test_registered_params_and_kind():
    for name in ("mixup", "cutmix", "cutout", "cutmix_pick"):
        cls = VIEWS.get(name)
        assert cls.kind == "extra"
        assert VIEWS.entry(name).paper
    p = VIEWS.get("cutmix_pick").Params()
    assert (p.m, p.k, p.criterion, p.tau_kl, p.student_mode, p.alpha, p.lam) == (
        2,
        None,
        "teacher_entropy",
        4.0,
        "eval",
        1.0,
        "batch",
    )
    assert p.weight == 1.0 and p.targets == "teacher"
    with pytest.raises(pydantic.ValidationError):
        VIEWS.get("cutmix_pick").Params(criterion="entropy")
    with pytest.raises(pydantic.ValidationError):
        VIEWS.get("cutout").Params(size=4, ratio=0.5)
    with pytest.raises(pydantic.ValidationError):
        VIEWS.get("mixup").Params(alpha=0)


# ----------------------------------------------------------------------------------------------- helpers
def test_derangement_no_fixed_points_and_permutation():
    g = _gen(1)
    for n in list(range(2, 20)) + [64, 257]:
        for _ in range(5):
            d = derangement(n, g)
            assert d.dtype == torch.int64
            assert sorted(d.tolist()) == list(range(n))
            assert all(d[i].item() != i for i in range(n))
    assert derangement(1, g).tolist() == [0]
    assert derangement(0, g).tolist() == []
    # n = 2 has one derangement; n = 3 has two, both must occur (not a fixed rotation)
    assert derangement(2, g).tolist() == [1, 0]
    seen = {tuple(derangement(3, g).tolist()) for _ in range(100)}
    assert seen == {(1, 2, 0), (2, 0, 1)}
    # n = 4 has 9 derangements, including the three pair swaps that a cyclic shift never gives
    seen4 = {tuple(derangement(4, g).tolist()) for _ in range(400)}
    assert len(seen4) == 9
    assert torch.equal(derangement(10, _gen(5)), derangement(10, _gen(5)))


def test_beta_moments():
    lam = beta(0.2, 20000, _gen(0))
    assert float(lam.min()) >= 0.0 and float(lam.max()) <= 1.0
    assert abs(float(lam.mean()) - 0.5) < 0.02
    assert abs(float(lam.var()) - 1 / (4 * (2 * 0.2 + 1))) < 0.01  # Var Beta(a, a) = 1 / (4(2a + 1))
    u = beta(1.0, 20000, _gen(0))
    assert abs(float(u.var()) - 1 / 12) < 0.005


def test_cut_sides_and_rand_box():
    lam = torch.tensor([0.0, 0.3, 0.75, 0.99, 1.0])
    sides = cut_sides((32, 20), lam)
    assert sides.tolist() == [[int(32 * math.sqrt(1 - v)), int(20 * math.sqrt(1 - v))] for v in lam.tolist()]
    assert cut_sides((50,), lam)[:, 0].tolist() == [int(50 * (1 - v)) for v in lam.tolist()]
    g = _gen(3)
    sides = torch.tensor([[6, 4]]).expand(2000, 2)
    boxes = rand_box((10, 9), sides, g)
    lo, hi = boxes[..., 0], boxes[..., 1]
    assert bool((lo >= 0).all()) and bool((hi[:, 0] <= 10).all()) and bool((hi[:, 1] <= 9).all())
    assert bool((hi - lo <= sides).all()) and bool((hi - lo >= sides - sides // 2).all())
    inside = (boxes[:, 0, 0] > 0) & (boxes[:, 0, 1] < 10)
    assert bool(((hi - lo)[inside, 0] == 6).all()) and bool(inside.any()) and bool((~inside).any())
    # centre uniform over the rows: lo + side//2 takes every row position
    centres = (boxes[:, 0, 1] - 6 + 3).where(boxes[:, 0, 0] == 0, boxes[:, 0, 0] + 3)
    assert set(centres.tolist()) == set(range(10))


# ----------------------------------------------------------------------------------------------- cutmix
@pytest.mark.parametrize("shape", [(2, 7, 10), (3, 40)])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_cutmix_area_lambda_is_pasted_share(shape, lam_mode):
    n = 12
    x = _constant_images(n, shape)
    view = CutMix(CutMix.Params(lam=lam_mode))
    masks = []
    nonzero = 0
    for seed in range(8):
        vb = view(_inp(x, seed))
        y_a, y_b, lam = vb.y_mix
        assert torch.equal(y_a, torch.arange(n)) and torch.equal(vb.idx, torch.arange(100, 100 + n))
        assert lam.shape == (n,)
        diff = vb.x != x  # every pixel of the partner differs from the sample's own
        spatial = diff[:, 0]
        assert torch.equal(diff, spatial.unsqueeze(1).expand_as(diff))  # the same region in every channel
        share = spatial.reshape(n, -1).float().mean(dim=1)
        assert torch.allclose(lam, 1 - share, atol=1e-6)
        for i in range(n):
            region = spatial[i]
            if region.any():
                nonzero += 1
                # pasted values come from one partner j != i, and y_b names it
                vals = vb.x[i][diff[i]].unique()
                assert len(vals) == 1
                j = int(vals.item()) - 1
                assert j != i and int(y_b[i]) == j
                # the region is a box: its bounding box is full
                coords = region.nonzero()
                span = (coords.max(0).values - coords.min(0).values + 1).prod()
                assert int(span) == int(region.sum())
            else:
                assert float(lam[i]) == 1.0
        masks.append(spatial)
        assert sorted(y_b.tolist()) == list(range(n)) and all(int(y_b[i]) != i for i in range(n))
    assert nonzero > 0
    if lam_mode == "batch":
        for spatial in masks:  # one box for the whole batch
            assert all(torch.equal(spatial[0], spatial[i]) for i in range(n))
    else:
        assert any(not torch.equal(m[0], m[i]) for m in masks for i in range(n))


def test_cutmix_batch_of_one_unchanged():
    x = torch.randn(1, 3, 5, 5)
    vb = CutMix()(_inp(x))
    assert torch.equal(vb.x, x) and vb.y_mix[2].tolist() == [1.0]
    vb = Mixup()(_inp(x))
    assert torch.equal(vb.x, x) and vb.y_mix[2].tolist() == [1.0] and torch.equal(vb.y_mix[1], vb.y)


# ----------------------------------------------------------------------------------------------- mixup
@pytest.mark.parametrize("shape", [(3, 6, 5), (2, 30)])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_mixup_values(shape, lam_mode):
    n = 9
    x = torch.randn(n, *shape, generator=_gen(11))
    vb = Mixup(Mixup.Params(lam=lam_mode, alpha=0.4, partner="derangement"))(_inp(x, 5))
    y_a, y_b, lam = vb.y_mix
    perm = y_b  # y = arange, so y[π] = π
    assert sorted(perm.tolist()) == list(range(n)) and all(int(perm[i]) != i for i in range(n))
    assert torch.equal(y_a, torch.arange(n))
    w = lam.reshape(n, *([1] * len(shape)))
    assert torch.allclose(vb.x, w * x + (1 - w) * x[perm], atol=1e-6)
    assert bool(((lam >= 0) & (lam <= 1)).all())
    if lam_mode == "batch":
        assert bool((lam == lam[0]).all())
    else:
        assert len(set(lam.tolist())) == n


def test_mixup_partner_is_the_authors_plain_permutation_by_default():
    """The authors' mixup draws torch.randperm: over many batches of 8 some samples are their own partner
    (expected 1 per batch), which a derangement never allows; the draw is randperm on the view's generator."""
    assert Mixup.Params().partner == "permutation"
    n, x = 8, torch.randn(8, 3, 4, 4)
    g = _gen(21)
    fixed = 0
    for _ in range(200):
        state = g.get_state()
        perm = Mixup()(
            ViewInput(
                x=x,
                y=torch.arange(n),
                idx=torch.arange(n),
                gen=g,
                teacher=None,
                student=None,
                lo=torch.tensor(-9.0),
                hi=torch.tensor(9.0),
            )
        ).y_mix[1]
        g2 = torch.Generator().set_state(state)
        torch.rand(1, generator=g2, dtype=torch.float64)  # λ (alpha = 1: one uniform draw per batch)
        assert torch.equal(perm, torch.randperm(n, generator=g2))
        fixed += int((perm == torch.arange(n)).sum())
    assert 100 < fixed < 300  # ~200 expected (one per batch)


# ----------------------------------------------------------------------------------------------- cutout
@pytest.mark.parametrize(
    "shape,params,side",
    [
        ((2, 12, 12), {"size": 4}, (4, 4)),
        ((2, 12, 16), {"ratio": 0.25}, (3, 4)),
        ((2, 12, 12), {}, (3, 3)),
        ((1, 40), {"size": 10}, (10,)),
    ],
)
def test_cutout_zero_box_labels_kept(shape, params, side):
    n = 64
    x = torch.rand(n, *shape, generator=_gen(2)) + 1.0  # no zero anywhere
    vb = Cutout(Cutout.Params(**params, per="sample"))(_inp(x, 4))
    assert vb.y_mix is None and torch.equal(vb.y, torch.arange(n)) and vb.teacher is None
    zero = vb.x == 0
    assert torch.equal(vb.x[~zero], x[~zero])
    spatial = zero[:, 0]
    assert torch.equal(zero, spatial.unsqueeze(1).expand_as(zero))
    counts = spatial.reshape(n, -1).sum(1)
    full = math.prod(side)
    assert bool((counts >= 1).all()) and bool((counts <= full).all())
    assert bool((counts == full).any()) and bool((counts < full).any())  # interior boxes and clipped ones
    for i in range(n):
        coords = spatial[i].nonzero()
        span = (coords.max(0).values - coords.min(0).values + 1).prod()
        assert int(span) == int(counts[i])


@pytest.mark.parametrize("shape", [(2, 12, 12), (1, 40)])
def test_cutout_default_cuts_one_hole_per_batch(shape):
    """Wang et al.'s KD+Cutout and T. stddev rows cut one hole per batch: every sample loses the same box."""
    assert Cutout.Params().per == "batch"
    n = 16
    x = torch.rand(n, *shape, generator=_gen(3)) + 1.0
    holes = {tuple(Cutout()(_inp(x, seed)).x[:, 0].eq(0).flatten(1).unique(dim=0).shape) for seed in range(6)}
    assert holes == {(1, math.prod(shape[1:]))}  # one distinct mask row per batch
    masks = [Cutout()(_inp(x, seed)).x[0, 0].eq(0) for seed in range(6)]
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1  # the position is random across batches


# ----------------------------------------------------------------------------------------------- pick
def _pick_setup(dims: int = 2, n: int = 8, seed: int = 0):
    shape = (3, 8, 8) if dims == 2 else (3, 32)
    x = torch.randn(n, *shape, generator=_gen(100 + seed)) * 2
    teacher = CountingTeacher(Net(dims=dims, seed=1), taps=["body"])
    student = Net(dims=dims, bn=True, seed=2)
    student.train()
    return x, teacher, student


@pytest.mark.parametrize("dims", [2, 1])
def test_pick_teacher_entropy_is_topk_of_augmented_pool(dims):
    n, m, seed = 8, 2, 3
    x, teacher, student = _pick_setup(dims)
    view = CutMixPick(CutMixPick.Params(m=m))
    inp = _inp(x, seed, teacher=teacher, student=student)
    vb = view(inp)
    assert teacher.calls == [m * n]  # the pool only: m·B teacher samples, no second pass on the kept rows

    pool_x, pool_idx, pool_mix = _replay_pool(x, seed, m)
    assert pool_x.shape[0] == m * n
    ref = Net(dims=dims, seed=1).eval()
    with torch.no_grad():
        scores = _entropy_ref(ref(pool_x))
        unmixed = _entropy_ref(ref(x[pool_idx - 100]))
    keep = _topk_set(scores, n)
    # the known bug (scoring the un-mixed images) would keep another set: the test can tell them apart
    assert keep != _topk_set(unmixed, n)
    assert torch.equal(vb.x, pool_x[keep])
    assert torch.equal(vb.idx, pool_idx[keep]) and torch.equal(vb.y, pool_mix[0][keep])
    for got, want in zip(vb.y_mix, pool_mix):
        assert torch.equal(got, want[keep])
    # the reused teacher output is a fresh teacher pass on the kept samples, logits and features
    fresh = teacher(vb.x)
    assert torch.allclose(vb.teacher.logits, fresh.logits, atol=1e-5)
    assert set(vb.teacher.feats) == {"body"}
    assert torch.allclose(vb.teacher.feats["body"], fresh.feats["body"], atol=1e-5)
    # informativeness ratio r = mean kept score / mean pool score
    assert vb.stats["score_kept"] == pytest.approx(float(scores[keep].mean()), rel=1e-5)
    assert vb.stats["score_pool"] == pytest.approx(float(scores.mean()), rel=1e-5)
    assert vb.stats["pick_ratio"] == pytest.approx(float(scores[keep].mean() / scores.mean()), rel=1e-5)
    assert vb.stats["pick_ratio"] >= 1.0


def test_pick_k_and_m():
    n = 6
    x, teacher, student = _pick_setup(n=n)
    vb = CutMixPick(CutMixPick.Params(m=3, k=4))(_inp(x, 7, teacher=teacher, student=student))
    pool_x, _, _ = _replay_pool(x, 7, 3)
    with torch.no_grad():
        scores = _entropy_ref(Net(seed=1).eval()(pool_x))
    assert teacher.calls == [18] and len(vb.x) == 4
    assert torch.equal(vb.x, pool_x[_topk_set(scores, 4)])


@pytest.mark.parametrize("criterion", ["student_entropy", "kl"])
def test_pick_student_criteria_eval_mode_and_restore(criterion):
    n, m, seed = 8, 2, 4
    x, teacher, student = _pick_setup(n=n)
    student.body[1].eval()  # a module the caller froze must stay frozen after the call
    modes: list[bool] = []
    hook = student.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    bn = student.body[1]
    bn.train()
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    bn.eval()
    vb = CutMixPick(CutMixPick.Params(criterion=criterion))(_inp(x, seed, teacher=teacher, student=student))
    hook.remove()
    assert modes == [False]  # scored in eval mode
    assert student.training and student.fc.training and not bn.training  # flags restored module by module
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]

    pool_x, _, _ = _replay_pool(x, seed, m)
    ref_s = Net(bn=True, seed=2).eval()
    with torch.no_grad():
        s_logits = ref_s(pool_x)
        t_logits = Net(seed=1).eval()(pool_x)
    scores = _entropy_ref(s_logits) if criterion == "student_entropy" else _kl_ref(t_logits, s_logits, 4.0)
    keep = _topk_set(scores, n)
    assert torch.equal(vb.x, pool_x[keep])
    if criterion == "kl":
        assert teacher.calls == [m * n]
        assert torch.allclose(vb.teacher.logits, teacher(vb.x).logits, atol=1e-5)
    else:  # the teacher did not score: the engine runs it on the k kept rows only
        assert teacher.calls == [] and vb.teacher is None
    assert vb.x.grad_fn is None and all(p.grad is None for p in student.parameters())


def test_pick_student_train_mode_updates_bn_and_restores():
    x, teacher, student = _pick_setup()
    bn = student.body[1]
    before = bn.running_mean.clone()
    modes: list[bool] = []
    hook = student.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    vb = CutMixPick(CutMixPick.Params(criterion="kl", student_mode="train"))(
        _inp(x, 1, teacher=teacher, student=student)
    )
    hook.remove()
    assert modes == [True] and student.training and bn.training
    assert not torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in student.parameters())
    assert len(vb.x) == len(x)
    # a student in eval mode comes back in eval mode
    student.eval()
    CutMixPick(CutMixPick.Params(criterion="student_entropy", student_mode="train"))(
        _inp(x, 1, teacher=teacher, student=student)
    )
    assert not student.training and not bn.training


def test_pick_random_keeps_k_rows_of_the_same_pool():
    n, m, seed = 8, 2, 6
    x, teacher, student = _pick_setup(n=n)
    pool_x, pool_idx, _ = _replay_pool(x, seed, m)
    t_vb = CutMixPick(CutMixPick.Params())(_inp(x, seed, teacher=teacher, student=student))
    r_vb = CutMixPick(CutMixPick.Params(criterion="random"))(_inp(x, seed, teacher=teacher, student=student))
    assert len(r_vb.x) == n and r_vb.teacher is None
    rows = []
    for i in range(n):
        match = [j for j in range(m * n) if torch.equal(r_vb.x[i], pool_x[j])]
        assert match, "a randomly kept row is not in the pool"
        rows.append(match[0])
        assert int(r_vb.idx[i]) == int(pool_idx[match[0]])
    assert len(set(rows)) == n  # k distinct candidates
    # same pool as teacher_entropy (the control), but a different choice for this seed
    assert not torch.equal(r_vb.x, t_vb.x)
    assert all(any(torch.equal(t_vb.x[i], pool_x[j]) for j in range(m * n)) for i in range(n))
    # random picks differ between seeds (the scores come from the generator)
    other = CutMixPick(CutMixPick.Params(criterion="random"))(_inp(x, seed + 1, teacher=teacher, student=student))
    assert not torch.equal(other.x, r_vb.x)


def test_pick_needs_teacher_for_teacher_criteria():
    x, _, student = _pick_setup()
    with pytest.raises(ValueError, match="teacher"):
        CutMixPick()(_inp(x, 0, teacher=None, student=student))


@pytest.mark.parametrize("dims", [2, 1])
@pytest.mark.parametrize(
    "name,params",
    [
        ("mixup", {}),
        ("mixup", {"lam": "sample", "alpha": 0.5}),
        ("cutmix", {}),
        ("cutmix", {"lam": "sample"}),
        ("cutout", {}),
        ("cutmix_pick", {}),
        ("cutmix_pick", {"criterion": "random"}),
        ("cutmix_pick", {"criterion": "kl"}),
    ],
)
def test_determinism_and_shapes(dims, name, params):
    x, teacher, student = _pick_setup(dims)
    cls = VIEWS.get(name)
    view = cls(cls.Params(**params))
    a = view(_inp(x, 9, teacher=teacher, student=student))
    b = view(_inp(x, 9, teacher=teacher, student=student))
    c = view(_inp(x, 10, teacher=teacher, student=student))
    assert a.x.shape == x.shape and a.x.dtype == x.dtype
    assert torch.equal(a.x, b.x) and torch.equal(a.idx, b.idx) and torch.equal(a.y, b.y)
    if a.y_mix is not None:
        assert all(torch.equal(u, v) for u, v in zip(a.y_mix, b.y_mix))
    assert not torch.equal(a.x, c.x)
    assert not torch.equal(a.x, x)
