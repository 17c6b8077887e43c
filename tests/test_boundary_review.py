"""BSS (with its scheduled KD) and ReviewKD against formulas written here, independently of the code under test."""

import json
import math

import pytest
import torch
from torch import nn

from kdlab.engine import run_recipe
from kdlab.errors import KDLabError
from kdlab.methods import boundary
from kdlab.methods.base import SetupInfo, StepContext
from kdlab.methods.boundary import BSS, BSSKD, bss_attack, sample_target_classes
from kdlab.methods.review import ReviewKD, hcl_loss
from kdlab.recipe import load_recipe
from kdlab.teacher import Teacher, TeacherOutput

INFO = SetupInfo(num_train=100, num_classes=5, input_shape=(1, 4, 4))


# ---------------------------------------------------------------------------------------------- helpers
def tiny_net(classes=5, seed=0, hidden=32):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )
    net.train()
    with torch.no_grad():
        net(torch.randn(64, 1, 4, 4))  # non-trivial BN statistics
    return net


def bss_ctx(x, y, student, teacher, epoch=0, epochs=4, s_logits=None):
    t_out = teacher(x)
    s = student(x) if s_logits is None else s_logits
    return StepContext(
        x=x,
        y=y,
        idx=torch.arange(len(y)),
        s_logits=s,
        s_feats={},
        teacher_outputs=[t_out],
        student=student,
        live_teachers=[teacher],
        epoch=epoch,
        epochs=epochs,
    )


def soft_ce_reference(s, t, tau):
    """mean_i -sum_k p_t log p_s with explicit exponentials in float64."""
    total = 0.0
    for si, ti in zip(s.double().tolist(), t.double().tolist()):
        zs = [math.exp(v / tau) for v in si]
        zt = [math.exp(v / tau) for v in ti]
        total += -sum((b / sum(zt)) * math.log(a / sum(zs)) for a, b in zip(zs, zt))
    return total / len(s)


def softmax_list(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------------------------------------- BSS
@pytest.mark.parametrize(
    "f, lam_bss, lam_kd", [(0.0, 2.0, 4.0), (0.5, 2.0 / 3.0, 2.5), (0.75, 0.0, 1.75), (1.0, 0.0, 1.0)]
)
def test_bss_schedules_match_the_formulas(f, lam_bss, lam_kd):
    # λ_BSS(e) = max(2(1 − 4/3 e/E), 0); λ_KD(e) = 1 + max(3(1 − e/E), 0); e/E = f
    assert boundary.bss_schedule(f) == pytest.approx(max(2 * (1 - 4 / 3 * f), 0))
    assert boundary.bss_schedule(f) == pytest.approx(lam_bss, abs=1e-12)
    assert boundary.bss_kd_schedule(f) == pytest.approx(lam_kd)
    # and the terms read them off the step context: epoch e of E = 4 epochs
    E = 4
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ctx = StepContext(
        x=torch.zeros(6, 1),
        y=torch.zeros(6, dtype=torch.long),
        idx=torch.arange(6),
        s_logits=s,
        s_feats={},
        teacher_outputs=[TeacherOutput(t)],
        epoch=int(f * E),
        epochs=E,
    )
    assert ctx.progress == pytest.approx(f)
    got = BSSKD()(ctx)["loss"].item()
    assert got == pytest.approx(lam_kd * soft_ce_reference(s, t, 3.0), rel=1e-5)


def test_attack_moves_towards_the_target_and_leaves_the_teacher_untouched():
    model = tiny_net()
    teacher = Teacher(model)
    model.train()  # someone flips it: the attack must still run the teacher in eval mode
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(48, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = teacher(x).logits
    src = z.argmax(-1)
    torch.manual_seed(0)
    tgt = sample_target_classes(z)
    assert (tgt != src).all()
    x_adv = bss_attack(teacher, x, tgt, steps=10, step_size=0.3, clamp=None)
    with torch.no_grad():
        za = teacher(x_adv).logits
    r = torch.arange(len(x))
    before, after = z[r, tgt] - z[r, src], za[r, tgt] - za[r, src]
    assert (after > before).float().mean() >= 0.9  # the targeted margin grows for (almost) every sample
    assert (za.argmax(-1) != src).any()  # and some samples cross the teacher's boundary
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert x_adv.grad_fn is None and not x_adv.requires_grad


def test_attack_stops_per_sample_once_flipped_and_clamps():
    # a linear teacher: the gap closes geometrically, samples whose top-1 flips stop moving
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    teacher = Teacher(nn.Sequential(nn.Flatten(), lin))
    x = torch.tensor([[2.0, 1.99], [2.0, -1.0]])  # sample 0 is near the boundary, sample 1 far from it
    x_adv = bss_attack(teacher, x, torch.tensor([1, 1]), steps=10, step_size=0.3, clamp=(-2.5, 2.5))
    # sample 0: one step of 0.3*(0.01+1e-4) along (-1, 1)/sqrt(2) does not flip it; count by hand
    ref = x[0].clone().tolist()
    for _ in range(10):
        gap = ref[0] - ref[1]
        if gap < 0:
            break
        step = 0.3 * (gap + 1e-4) / math.sqrt(2)
        ref = [ref[0] - step, ref[1] + step]
    assert x_adv[0].tolist() == pytest.approx(ref, rel=1e-5)
    assert (x_adv.abs() <= 2.5).all()
    # a sample that flips at the first step stays put for the remaining steps
    y = bss_attack(teacher, torch.tensor([[1.0, 0.999]]), torch.tensor([1]), steps=1, step_size=3.0, clamp=None)
    z = bss_attack(teacher, torch.tensor([[1.0, 0.999]]), torch.tensor([1]), steps=10, step_size=3.0, clamp=None)
    assert teacher(y).logits.argmax(-1).item() == 1 and torch.equal(y, z)


def test_target_classes_follow_the_teacher_distribution():
    t = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    torch.manual_seed(0)
    draws = sample_target_classes(t)
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    # P(k) = p_t(k) / (1 - max p_t) over the non-top-1 classes
    assert freq[0] == 0
    for k, p in [(1, 0.3 / 0.5), (2, 0.15 / 0.5), (3, 0.05 / 0.5)]:
        assert freq[k].item() == pytest.approx(p, abs=0.03)


def test_bss_loss_matches_reference_with_fixed_adversarial_inputs(monkeypatch):
    torch.manual_seed(3)
    teacher, student = Teacher(tiny_net(seed=1)), tiny_net(seed=2)
    x = torch.randn(80, 1, 4, 4)
    with torch.no_grad():
        zt, zs = teacher(x).logits, student(x)
    # labels: correct for the teacher on the first 60, and wrong on the rest
    y = zt.argmax(-1).clone()
    y[60:] = (y[60:] + 1) % 5
    delta = torch.randn(1, 1, 4, 4) * 0.3
    seen = {}

    def fixed_attack(teacher_, xb, target, **kw):
        seen["x"], seen["target"], seen["kw"] = xb.clone(), target.clone(), kw
        return xb + delta

    monkeypatch.setattr(boundary, "bss_attack", fixed_attack)
    term = BSS(BSS.Params(max_samples=4))
    ctx = bss_ctx(x, y, student, teacher, epoch=1, epochs=4, s_logits=zs.clone().requires_grad_())
    loss = term(ctx)["loss"]

    # base samples by hand: teacher and student correct, top 4 by sum_{k != y} (p_t(k) - p_s(k))^2
    cands = []
    for i in range(80):
        if max(range(5), key=lambda k: zt[i, k]) == y[i] and max(range(5), key=lambda k: zs[i, k]) == y[i]:
            pt, ps = softmax_list(zt[i].tolist()), softmax_list(zs[i].tolist())
            cands.append((sum((pt[k] - ps[k]) ** 2 for k in range(5) if k != y[i]), i))
    assert len(cands) > 4
    chosen = [i for _, i in sorted(cands, reverse=True)[:4]]
    assert torch.equal(seen["x"], x[chosen])
    assert seen["kw"] == {"steps": 10, "step_size": 0.3, "clamp": (-2.5, 2.5)}
    assert (seen["target"] != zt[chosen].argmax(-1)).all()
    x_adv = x[chosen] + delta
    with torch.no_grad():
        t_adv, s_adv = teacher(x_adv).logits, student(x_adv)
    lam = max(2 * (1 - 4 / 3 * 0.25), 0)
    assert loss.item() == pytest.approx(lam * soft_ce_reference(s_adv, t_adv, 3.0), rel=1e-5)


def test_bss_gradients_reach_the_student_only():
    teacher_model, student = tiny_net(seed=1), tiny_net(seed=2)
    teacher = Teacher(teacher_model)
    x = torch.randn(32, 1, 4, 4)
    y = teacher(x).logits.argmax(-1)
    loss = BSS(BSS.Params(require_student_correct=False))(bss_ctx(x, y, student, teacher))["loss"]
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert student[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bss_finite_in_low_precision(dtype):
    teacher_model, student = tiny_net(seed=1), tiny_net(seed=2)
    teacher = Teacher(teacher_model)
    x = torch.randn(32, 1, 4, 4)
    y = teacher(x).logits.argmax(-1)
    with torch.autocast("cpu", dtype=dtype):
        ctx = bss_ctx(x, y, student, teacher)
        out = BSS(BSS.Params(require_student_correct=False))(ctx)["loss"] + BSSKD()(ctx)["loss"]
    out.backward()
    assert torch.isfinite(out) and out.item() > 0
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())
    # saturated, low-precision logits given directly
    s = (torch.randn(8, 5) * 300).to(dtype).requires_grad_()
    t = (torch.randn(8, 5) * 300).to(dtype)
    ctx = StepContext(
        x=torch.zeros(8, 1),
        y=t.float().argmax(-1),
        idx=torch.arange(8),
        s_logits=s,
        s_feats={},
        teacher_outputs=[TeacherOutput(t)],
    )
    kd = BSSKD()(ctx)["loss"]
    kd.backward()
    assert torch.isfinite(kd) and torch.isfinite(s.grad).all()


def test_bss_two_classes_and_batch_of_one():
    teacher_model, student = tiny_net(classes=2, seed=1), tiny_net(classes=2, seed=2)
    teacher = Teacher(teacher_model)
    x = torch.randn(16, 1, 4, 4)
    y = teacher(x).logits.argmax(-1)
    loss = BSS(BSS.Params(require_student_correct=False))(bss_ctx(x, y, student, teacher))["loss"]
    assert torch.isfinite(loss) and loss.item() > 0
    # a single base sample cannot go through the student's training BatchNorm1d: a finite 0, no error
    y_one = y.clone()
    y_one[1:] = 1 - y[1:]
    out = BSS(BSS.Params(require_student_correct=False))(bss_ctx(x, y_one, student, teacher))["loss"]
    assert out.item() == 0.0
    # batch of 1 whose label the teacher gets wrong: no base sample -> a finite 0 that still backpropagates
    student.eval()  # a 1-sample batch cannot go through a training BatchNorm1d in the student's own forward
    x1 = torch.randn(1, 1, 4, 4)
    y1 = 1 - teacher(x1).logits.argmax(-1)
    out = BSS()(bss_ctx(x1, y1, student, teacher))["loss"]
    assert out.item() == 0.0 and torch.isfinite(out)
    out.backward()
    # batch of 1 with a base sample: finite and positive
    y1 = teacher(x1).logits.argmax(-1)
    out = BSS(BSS.Params(require_student_correct=False))(bss_ctx(x1, y1, student, teacher))["loss"]
    assert torch.isfinite(out) and out.item() > 0
    # identical logits everywhere: the clean KD term is the teacher's entropy, finite
    flat = torch.zeros(3, 2)
    ctx = StepContext(
        x=torch.zeros(3, 1),
        y=torch.zeros(3, dtype=torch.long),
        idx=torch.arange(3),
        s_logits=flat,
        s_feats={},
        teacher_outputs=[TeacherOutput(flat)],
    )
    assert BSSKD()(ctx)["loss"].item() == pytest.approx(4 * math.log(2), rel=1e-6)


def test_bss_is_free_after_its_schedule_ends_and_needs_the_models():
    teacher, student = Teacher(tiny_net(seed=1)), tiny_net(seed=2)
    x = torch.randn(8, 1, 4, 4)
    y = teacher(x).logits.argmax(-1)
    ctx = bss_ctx(x, y, student, teacher, epoch=3, epochs=4)  # 75%: λ_BSS = 0, no attack is run
    ctx.live_teachers = []
    assert BSS()(ctx)["loss"].item() == 0.0
    ctx.epoch = 0
    with pytest.raises(KDLabError, match="teacher model"):
        BSS()(ctx)
    with pytest.raises(ValueError):
        BSS.Params(clamp=(1.0, -1.0))


# ---------------------------------------------------------------------------------------------- ReviewKD
def pool_ref(f, size):
    """Adaptive average pooling by explicit block means (H, W divisible by size), float64."""
    n, c, h, w = f.shape
    return f.double().reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


def hcl_reference(fs_list, ft_list):
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        h = fs.shape[2]
        terms = [(1.0, ((fs.double() - ft.double()) ** 2).mean().item())]
        w = 1.0
        for size in (4, 2, 1):
            if size < h:
                w /= 2
                terms.append((w, ((pool_ref(fs, size) - pool_ref(ft, size)) ** 2).mean().item()))
        total += sum(a * b for a, b in terms) / sum(a for a, _ in terms)
    return total


def test_hcl_matches_reference():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 8, 8), (3, 6, 4, 4), (3, 5, 2, 2), (3, 7, 1, 1)]
    fs = [torch.randn(*s, generator=g) for s in shapes]
    ft = [torch.randn(*s, generator=g) for s in shapes]
    assert hcl_loss(fs, ft).item() == pytest.approx(hcl_reference(fs, ft), rel=1e-5)
    # spot-check the weights for an 8x8 map: levels 4, 2, 1 with 1/2, 1/4, 1/8, normalised by 1.875
    a, b = fs[0], ft[0]
    want = (
        ((a - b) ** 2).mean()
        + 0.5 * ((pool_ref(a, 4) - pool_ref(b, 4)) ** 2).mean()
        + 0.25 * ((pool_ref(a, 2) - pool_ref(b, 2)) ** 2).mean()
        + 0.125 * ((pool_ref(a, 1) - pool_ref(b, 1)) ** 2).mean()
    ) / 1.875
    assert hcl_loss([a], [b]).item() == pytest.approx(want.item(), rel=1e-5)
    assert hcl_loss([a], [a.clone()]).item() == 0.0


S_SHAPES = {"s1": torch.Size([4, 8, 8]), "s2": torch.Size([6, 4, 4]), "s3": torch.Size([10]), "logits": torch.Size([5])}
T_SHAPES = {
    "t1": torch.Size([16, 4, 4]),
    "t2": torch.Size([12, 4, 4]),
    "t3": torch.Size([20]),
    "logits": torch.Size([5]),
}


def review_term(**kw):
    term = ReviewKD(
        ReviewKD.Params(layers=["s1", "s2", "s3"], teacher_layers=["t1", "t2", "t3"], warmup_epochs=0, **kw)
    )
    term.setup(S_SHAPES, T_SHAPES, INFO)
    return term


def review_ctx(n=4, dtype=torch.float32, zero=False, seed=0, epoch=0):
    g = torch.Generator().manual_seed(seed)
    mk = (lambda s: torch.zeros(n, *s)) if zero else (lambda s: torch.randn(n, *s, generator=g))
    s_feats = {k: mk(v).to(dtype).requires_grad_() for k, v in S_SHAPES.items() if k != "logits"}
    t_feats = {k: mk(v).to(dtype) for k, v in T_SHAPES.items() if k != "logits"}
    return StepContext(
        x=torch.zeros(n, 1),
        y=torch.zeros(n, dtype=torch.long),
        idx=torch.arange(n),
        s_logits=torch.zeros(n, 5),
        s_feats=s_feats,
        teacher_outputs=[TeacherOutput(torch.zeros(n, 5), t_feats)],
        epoch=epoch,
        epochs=40,
    )


def test_review_handles_heterogeneous_shapes():
    term = review_term()
    ctx = review_ctx()
    outs = term.fuse([ctx.s_feats[k] for k in ("s1", "s2", "s3")])
    assert [tuple(o.shape) for o in outs] == [(4, 16, 4, 4), (4, 12, 4, 4), (4, 20, 1, 1)]
    # mid_channel = min(512, channels of the student's deepest level) as the official code
    assert term.abfs[0].conv1[0].out_channels == 10 and term.abfs[2].att is None and term.abfs[0].att is not None
    assert review_term(mid_channel=8).abfs[1].conv1[0].out_channels == 8
    with pytest.raises(ValueError, match="paired one to one"):
        ReviewKD.Params(layers=["a", "b"], teacher_layers=["c"])
    with pytest.raises(ValueError):
        ReviewKD.Params(layers=[])
    # default teacher side: the pre-ReLU stage ends and the same penultimate feature
    assert ReviewKD().taps().teacher == ("@pre_stage1", "@pre_stage2", "@pre_stage3", "@penultimate")
    assert ReviewKD().taps().student == ("@stage1", "@stage2", "@stage3", "@penultimate")
    bad = ReviewKD(ReviewKD.Params(layers=["s"], teacher_layers=["t"]))
    with pytest.raises(KDLabError, match="per-sample shape"):
        bad.setup({"s": torch.Size([3, 4])}, {"t": torch.Size([3, 4])}, INFO)


def test_review_loss_is_hcl_of_the_fused_features_times_warmup():
    term = review_term()
    ctx = review_ctx()
    term.eval()  # deterministic BN for the comparison
    with torch.no_grad():
        outs = term.fuse([ctx.s_feats[k] for k in ("s1", "s2", "s3")])
        t = [ctx.t_feats["t1"], ctx.t_feats["t2"], ctx.t_feats["t3"][:, :, None, None]]
        want = hcl_reference(outs, t)
        assert term(ctx)["loss"].item() == pytest.approx(want, rel=1e-5)
        warm = ReviewKD(ReviewKD.Params(layers=["s1", "s2", "s3"], teacher_layers=["t1", "t2", "t3"]))  # 20 epochs
        warm.setup(S_SHAPES, T_SHAPES, INFO)
        warm.load_state_dict(term.state_dict())
        warm.eval()
        ctx.epoch, ctx.step, ctx.steps_per_epoch = 5, 1, 2  # 5.5 epochs of 20
        assert warm(ctx)["loss"].item() == pytest.approx(want * 5.5 / 20, rel=1e-5)
        ctx.epoch = 30
        assert warm(ctx)["loss"].item() == pytest.approx(want, rel=1e-5)


def test_review_gradients_reach_student_and_abfs_not_teacher():
    term = review_term()
    teacher_model = nn.Linear(3, 3)
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    ctx = review_ctx()
    ctx.live_teachers = [Teacher(teacher_model)]
    term(ctx)["loss"].backward()
    for k, v in ctx.s_feats.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k
    for name, p in term.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(not v.requires_grad and v.grad is None for v in ctx.t_feats.values())
    assert all(p.grad is None for p in teacher_model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_review_finite_in_low_precision(dtype):
    term = review_term()
    ctx = review_ctx(dtype=dtype)
    for k in ctx.s_feats:
        ctx.s_feats[k] = (ctx.s_feats[k].detach() * 100).requires_grad_()
    loss = term(ctx)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v.grad).all() for v in ctx.s_feats.values())
    with torch.autocast("cpu", dtype=dtype):
        loss = term(review_ctx(dtype=dtype))["loss"]
    assert torch.isfinite(loss)


def test_review_edge_cases():
    term = review_term()
    loss = term(review_ctx(zero=True))["loss"]  # all-zero features: finite (ABF biases/BN make it > 0 or 0)
    assert torch.isfinite(loss)
    one = review_ctx(n=1)
    out = term(one)["loss"]  # batch of 1 in training: BN cannot fit 1x1 levels -> finite 0, still backprops
    assert out.item() == 0.0
    out.backward()
    term.eval()
    assert torch.isfinite(term(review_ctx(n=1))["loss"])  # in eval mode a batch of 1 is fine


# ---------------------------------------------------------------------------------------------- end to end
def smoke_recipe(out, objective):
    return load_recipe(
        {
            "name": "smoke",
            "out": str(out),
            "seed": 0,
            "data": {"name": "digits", "batch_size": 256},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
            "objective": objective,
            "schedule": {"epochs": 1},
            "train": {"tensorboard": False},
        }
    )


@pytest.mark.parametrize(
    "objective, keys",
    [
        (
            {"ce": {}, "bss_kd": {}, "bss": {"require_student_correct": False, "max_samples": 32}},
            ["train/ce", "train/bss_kd", "train/bss"],
        ),
        # smallcnn has two stages: aliases @stage1, @stage2 (teacher side @pre_stage1, @pre_stage2), @penultimate
        (
            {"ce": {}, "reviewkd": {"layers": ["@stage1", "@stage2", "@penultimate"], "warmup_epochs": 0}},
            ["train/ce", "train/reviewkd"],
        ),
        # real module paths work as well: relu1/relu2 stage ends, bn1/bn2 pre-ReLU, relu3 the penultimate
        (
            {
                "ce": {},
                "reviewkd": {
                    "layers": ["relu1", "relu2", "relu3"],
                    "teacher_layers": ["bn1", "bn2", "relu3"],
                    "warmup_epochs": 0,
                },
            },
            ["train/ce", "train/reviewkd"],
        ),
    ],
)
def test_one_epoch_on_digits(tmp_path, objective, keys):
    run_recipe(smoke_recipe(tmp_path, objective), quiet=True)
    lines = [json.loads(x) for x in (tmp_path / "smoke" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    for k in keys + ["train/loss"]:
        assert k in lines[-1] and math.isfinite(lines[-1][k]), k
    assert lines[-1][keys[-1]] > 0


@pytest.mark.parametrize("method, terms", [("bss", {"ce", "bss_kd", "bss"}), ("reviewkd", {"ce", "reviewkd"})])
def test_method_recipes_compose_with_a_pair_and_terms_are_registered(method, terms):
    from pathlib import Path

    from kdlab.registry import TERMS

    root = Path(__file__).resolve().parents[1] / "recipes"
    r = load_recipe([root / "cifar100" / "resnet32x4-resnet8x4.yaml", root / "methods" / f"{method}.yaml"])
    assert set(r.objective) == terms and r.name == method
    for name in terms - {"ce"}:
        e = TERMS.entry(name)
        assert e.description and "\n" not in e.description and e.paper.endswith("2019" if "bss" in name else "2021")


@pytest.mark.parametrize(
    "pair, weight", [("resnet32x4-resnet8x4", 5.0), ("wrn_40_2-wrn_16_2", 5.0), ("resnet56-resnet20", 0.6)]
)
def test_reviewkd_pair_recipes_carry_the_official_per_pair_weight(pair, weight):
    """dvlab-research/ReviewKD's CIFAR-100 script: --kd-loss-weight 5.0 / 5.0 / 0.6 for these pairs."""
    r = load_recipe([f"recipes/cifar100/{pair}.yaml", f"recipes/methods/reviewkd_{pair}.yaml"])
    review, ce = r.objective["reviewkd"].params, r.objective["ce"].params
    assert r.name == "reviewkd" and review.weight == weight and review.warmup_epochs == 20 and ce.weight == 1.0
