"""Tap aliases on the zoo, and the feature-map terms (FitNet, AT, NST, VID, FSP, AB, FT) against formulas
written here with explicit loops, independently of the code under test."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from kdlab.capture import probe_shapes
from kdlab.engine import run_recipe
from kdlab.errors import KDLabError
from kdlab.methods.base import SetupInfo, StepContext
from kdlab.models import build_model
from kdlab.recipe import load_recipe
from kdlab.registry import MODELS, TERMS
from kdlab.teacher import TeacherOutput

# ----------------------------------------------------------------------------------------------- aliases

SHAPES = {"mlp": (20,), "cnn1d": (2, 40), "smallcnn": (1, 8, 8)}
# Vision models only: the text models (kdlab.models.hf) take token ids and are covered by tests/test_text.py.
ZOO_NAMES = sorted(
    n
    for n in MODELS.names()
    if MODELS.get(n).__module__.startswith("kdlab.models") and MODELS.get(n).__module__ != "kdlab.models.hf"
)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_alias_resolves_and_stages_shrink(name):
    shape = SHAPES.get(name, (3, 32, 32))
    model = build_model(name, num_classes=10, input_shape=shape)
    taps = model.kdlab_taps
    assert isinstance(taps, dict) and all(isinstance(v, str) for v in taps.values())
    n = max(int(k[5:]) for k in taps if k.startswith("stage"))
    assert [f"stage{k}" in taps for k in range(1, n + 1)] == [True] * n
    assert taps["last"] == taps[f"stage{n}"]
    assert "penultimate" in taps
    pre = [k for k in taps if k.startswith("pre_stage")]
    assert all(f"stage{k[9:]}" in taps for k in pre)
    shapes = probe_shapes(model, ["@" + a for a in taps], shape)
    fc_in = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].in_features
    assert shapes["@penultimate"] == (fc_in,)
    for k in pre:  # same point, before the ReLU
        assert shapes["@" + k] == shapes["@stage" + k[9:]]
    stages = [shapes[f"@stage{k}"] for k in range(1, n + 1)]
    if len(stages[0]) > 1:  # maps: resolution never grows, and shrinks overall
        res = [math.prod(s[1:]) for s in stages]
        assert all(a >= b for a, b in zip(res, res[1:])), res
        if n > 1:
            assert res[0] > res[-1], res


def test_vgg_stage_resolutions_strictly_decrease_at_64px():
    # at 32 px VGG's blocks 3 and 4 share a resolution (RepDistiller pools after block 3 only for 64 px)
    shapes = probe_shapes(
        build_model("vgg8", num_classes=10, input_shape=(3, 64, 64)), [f"@stage{k}" for k in range(1, 5)], (3, 64, 64)
    )
    res = [shapes[f"@stage{k}"][1] for k in range(1, 5)]
    assert res == sorted(res, reverse=True) and len(set(res)) == 4


def test_resnet_pre_stage_is_the_residual_sum():
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    assert model.kdlab_taps["pre_stage3"] == "layer3.2.preact"
    assert model.kdlab_taps["stage2"] == "layer2" and model.kdlab_taps["penultimate"] == "flatten"


# ----------------------------------------------------------------------------------------------- harness

S_SHAPES = {
    "@stem": (4, 8, 8),
    "@stage1": (6, 8, 8),
    "@stage2": (8, 4, 4),
    "@stage3": (8, 2, 2),
    "@last": (8, 2, 2),
    "@pre_stage1": (6, 8, 8),
    "@pre_stage2": (8, 4, 4),
    "@pre_stage3": (8, 2, 2),
}
T_SHAPES = {
    "@stem": (5, 8, 8),
    "@stage1": (10, 8, 8),
    "@stage2": (12, 4, 4),
    "@stage3": (16, 2, 2),
    "@last": (16, 2, 2),
    "@pre_stage1": (10, 8, 8),
    "@pre_stage2": (12, 4, 4),
    "@pre_stage3": (16, 2, 2),
}
INFO = SetupInfo(num_train=100, num_classes=5, input_shape=(3, 8, 8))
NAMES = ["fitnet", "at", "nst", "vid", "fsp", "ab", "ft"]


def build(name, s_shapes=S_SHAPES, t_shapes=T_SHAPES, pretrained=True, **params):
    cls = TERMS.get(name)
    term = cls(cls.Params(**params))
    tp = term.taps()
    term.setup(
        {k: torch.Size(s_shapes[k]) for k in tp.student} | {"logits": torch.Size([5])},
        {k: torch.Size(t_shapes[k]) for k in tp.teacher} | {"logits": torch.Size([5])},
        INFO,
    )
    if name == "ft" and pretrained:  # FT's transfer mode warns when its paraphraser was never pre-trained
        term.pretrain_steps.fill_(1)
    return term


def feats(shapes, batch, gen, dtype=torch.float32, scale=1.0, zero=False):
    out = {}
    for k, s in shapes.items():
        x = torch.zeros(batch, *s) if zero else torch.randn(batch, *s, generator=gen) * scale
        out[k] = x.to(dtype)
    return out


def context(s_feats, t_feats, batch=4):
    return StepContext(
        x=torch.zeros(batch, 3, 8, 8),
        y=torch.zeros(batch, dtype=torch.long),
        idx=torch.arange(batch),
        s_logits=torch.zeros(batch, 5),
        s_feats=s_feats,
        teacher_outputs=[TeacherOutput(torch.zeros(batch, 5), t_feats)],
    )


def avgpool(x, k):
    """Plain k x k average pooling of (B, C, H, W) with explicit loops."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h // k, w // k, dtype=torch.float64)
    for i in range(h // k):
        for j in range(w // k):
            out[:, :, i, j] = x[:, :, i * k : (i + 1) * k, j * k : (j + 1) * k].double().mean((2, 3))
    return out


def same(shapes):
    """Teacher shapes equal to the student's (so identity connectors / no channel mapping)."""
    return dict(shapes)


# ----------------------------------------------------------------------------------------------- formulas


def test_fitnet_is_mse_after_the_connector():
    g = torch.Generator().manual_seed(0)
    term = build("fitnet", t_shapes=same(S_SHAPES), connector="identity")
    s, t = feats(S_SHAPES, 3, g), feats(S_SHAPES, 3, g)
    a, b = s["@stage2"].double().flatten().tolist(), t["@stage2"].double().flatten().tolist()
    want = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
    assert term(context(s, t, 3))["loss"].item() == pytest.approx(want, rel=1e-5)
    assert TERMS.get("fitnet").Params().weight == 100.0


@pytest.mark.parametrize(
    "s_hw, t_hw, conv_type, kernel, stride",
    [
        ((8, 8), (8, 8), nn.Conv2d, (1, 1), (1, 1)),  # equal resolution: 1x1
        ((8, 8), (4, 4), nn.Conv2d, (3, 3), (2, 2)),  # student twice the teacher: stride-2 3x3
        ((4, 4), (8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),  # student half the teacher: 4x4 transposed, stride 2
        ((7, 6), (4, 4), nn.Conv2d, (4, 3), (1, 1)),  # otherwise: kernel n_s - n_t + 1 (Romero et al.)
    ],
)
def test_fitnet_default_regressor_is_repdistillers_convreg(s_hw, t_hw, conv_type, kernel, stride):
    s_shapes, t_shapes = {"@stage2": (6, *s_hw)}, {"@stage2": (10, *t_hw)}
    term = build("fitnet", s_shapes=s_shapes, t_shapes=t_shapes)
    conv, bn, relu = term.connector
    assert type(conv) is conv_type and conv.kernel_size == kernel and conv.stride == stride
    assert (conv.in_channels, conv.out_channels, conv.bias is not None) == (6, 10, True)
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    out = term.connector(torch.randn(2, 6, *s_hw))
    assert out.shape == (2, 10, *t_hw) and (out >= 0).all()


def test_fitnet_convreg_on_other_upsampling_and_signals():
    term = build("fitnet", s_shapes={"@stage2": (6, 3, 3)}, t_shapes={"@stage2": (10, 8, 8)})
    assert term.connector(torch.randn(2, 6, 3, 3)).shape == (2, 10, 8, 8)  # resize, then 1x1 (our extension)
    term = build("fitnet", s_shapes={"@stage2": (6, 20)}, t_shapes={"@stage2": (10, 10)})
    assert isinstance(term.connector[0], nn.Conv1d) and term.connector[0].stride == (2,)
    assert term.connector(torch.randn(2, 6, 20)).shape == (2, 10, 10)


def reference_at(s, t, p=2.0):
    total = 0.0
    for fs, ft in zip(s, t):
        b, _, h, w = fs.shape
        acc = 0.0
        for i in range(b):
            qs = [
                sum(abs(float(fs[i, c, y, x])) ** p for c in range(fs.shape[1])) / fs.shape[1]
                for y in range(h)
                for x in range(w)
            ]
            qt = [
                sum(abs(float(ft[i, c, y, x])) ** p for c in range(ft.shape[1])) / ft.shape[1]
                for y in range(h)
                for x in range(w)
            ]
            ns, nt = math.sqrt(sum(v * v for v in qs)) or 1.0, math.sqrt(sum(v * v for v in qt)) or 1.0
            acc += sum((a / ns - c / nt) ** 2 for a, c in zip(qs, qt))
        total += acc / (b * h * w)
    return total


def test_at_matches_reference_with_pooling():
    g = torch.Generator().manual_seed(1)
    s_shapes = {"@stage1": (3, 4, 4), "@stage2": (5, 4, 4), "@stage3": (4, 2, 2)}
    t_shapes = {"@stage1": (6, 2, 2), "@stage2": (2, 4, 4), "@stage3": (4, 2, 2)}  # stage1: student 2x larger
    term = build("at", s_shapes, t_shapes)
    s, t = feats(s_shapes, 2, g), feats(t_shapes, 2, g)
    want = reference_at(
        [avgpool(s["@stage1"], 2), s["@stage2"], s["@stage3"]], [t["@stage1"], t["@stage2"], t["@stage3"]]
    )
    assert term(context(s, t, 2))["loss"].item() == pytest.approx(want, rel=1e-5)
    assert TERMS.get("at").Params().weight == 1000.0


def reference_nst(fs, ft):
    """MMD^2 with k(x, y) = (x.y)^2 between the L2-normalised channel responses, averaged over the batch."""
    b = fs.shape[0]
    total = 0.0
    for i in range(b):

        def unit(f, i=i):
            rows = [f[i, c].double().flatten().tolist() for c in range(f.shape[1])]
            return [[v / (math.sqrt(sum(u * u for u in r)) or 1.0) for v in r] for r in rows]

        xs, ys = unit(fs), unit(ft)

        def k(a, c):
            return sum(u * v for u, v in zip(a, c)) ** 2

        kss = sum(k(a, c) for a in xs for c in xs) / len(xs) ** 2
        ktt = sum(k(a, c) for a in ys for c in ys) / len(ys) ** 2
        kst = sum(k(a, c) for a in xs for c in ys) / (len(xs) * len(ys))
        total += kss + ktt - 2 * kst
    return total / b


def test_nst_matches_reference():
    g = torch.Generator().manual_seed(2)
    s_shapes = {"@stage1": (3, 4, 4), "@stage2": (2, 2, 2), "@stage3": (2, 2, 2)}
    t_shapes = {"@stage1": (5, 4, 4), "@stage2": (4, 2, 2), "@stage3": (3, 2, 2)}
    term = build("nst", s_shapes, t_shapes)
    s, t = feats(s_shapes, 2, g), feats(t_shapes, 2, g)
    want = sum(reference_nst(s[k], t[k]) for k in ("@stage1", "@stage2", "@stage3"))
    assert term(context(s, t, 2))["loss"].item() == pytest.approx(want, rel=1e-5)
    same_feats = {k: v.clone() for k, v in s.items()}
    term2 = build("nst", s_shapes, s_shapes)
    assert term2(context(s, same_feats, 2))["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_vid_is_the_gaussian_nll_with_softplus_variance():
    g = torch.Generator().manual_seed(3)
    term = build("vid", layers=["@stage2"])
    head = term.heads["l0"]
    var0 = math.log(1 + math.exp(head.raw_var[0].item())) + 1e-5
    assert var0 == pytest.approx(5.0, rel=1e-6)  # initial variance (authors' code)
    with torch.no_grad():
        head.raw_var.copy_(torch.linspace(-1, 2, 12))
    s, t = feats(S_SHAPES, 2, g), feats(T_SHAPES, 2, g)
    mu = head.regressor(s["@stage2"]).double()  # the learned mean (a connector); the NLL is checked here
    tt = t["@stage2"].double()
    acc, n = 0.0, 0
    for b in range(2):
        for c in range(12):
            v = math.log(1 + math.exp(head.raw_var[c].item())) + 1e-5
            for y in range(4):
                for x in range(4):
                    acc += 0.5 * ((mu[b, c, y, x].item() - tt[b, c, y, x].item()) ** 2 / v + math.log(v))
                    n += 1
    assert term(context(s, t, 2))["loss"].item() == pytest.approx(acc / n, rel=1e-5)


def reference_fsp(maps_s, maps_t):
    total = 0.0
    for (a_s, b_s), (a_t, b_t) in zip(zip(maps_s, maps_s[1:]), zip(maps_t, maps_t[1:])):
        acc, n = 0.0, 0
        for i in range(a_s.shape[0]):
            for c1 in range(a_s.shape[1]):
                for c2 in range(b_s.shape[1]):
                    npos = a_s.shape[2] * a_s.shape[3]
                    u_s, v_s = a_s[i, c1].flatten().tolist(), b_s[i, c2].flatten().tolist()
                    u_t, v_t = a_t[i, c1].flatten().tolist(), b_t[i, c2].flatten().tolist()
                    gs = sum(u_s[p] * v_s[p] for p in range(npos)) / npos
                    gt = sum(u_t[p] * v_t[p] for p in range(npos)) / npos
                    acc += (gs - gt) ** 2
                    n += 1
        total += acc / n
    return total


def test_fsp_matches_reference_and_pools_to_the_smaller_map():
    g = torch.Generator().manual_seed(4)
    shapes = {"@stage1": (3, 4, 4), "@stage2": (4, 2, 2), "@stage3": (2, 2, 2)}
    term = build("fsp", shapes, same(shapes), layers=["@stage1", "@stage2", "@stage3"])
    s, t = feats(shapes, 2, g), feats(shapes, 2, g)
    ms = [avgpool(s["@stage1"], 2), s["@stage2"].double(), s["@stage3"].double()]
    mt = [avgpool(t["@stage1"], 2), t["@stage2"].double(), t["@stage3"].double()]
    # pair (1, 2) pools stage1 to 2x2; pair (2, 3) is already 2x2
    assert term(context(s, t, 2))["loss"].item() == pytest.approx(reference_fsp(ms, mt), rel=1e-5)


def test_fsp_default_is_stem_plus_every_stage_three_matrices():
    """Yim et al. / RepDistiller: stem, stage1, stage2, stage3 -> 3 FSP matrices (2 before the @stem alias)."""
    g = torch.Generator().manual_seed(7)
    shapes = {"@stem": (2, 2, 2), "@stage1": (3, 2, 2), "@stage2": (4, 2, 2), "@stage3": (2, 2, 2)}
    term = build("fsp", shapes, same(shapes))
    assert term.taps().student == ("@stem", "@stage1", "@stage2", "@stage3")
    s, t = feats(shapes, 2, g), feats(shapes, 2, g)
    maps = [[f[k].double() for k in shapes] for f in (s, t)]
    assert term(context(s, t, 2))["loss"].item() == pytest.approx(reference_fsp(*maps), rel=1e-5)


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if n not in SHAPES])
def test_cifar_zoo_declares_a_stem_alias_before_stage1(name):
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32))
    shapes = probe_shapes(model, ["@stem", "@stage1"], (3, 32, 32))
    assert len(shapes["@stem"]) == 3 and shapes["@stem"][1] >= shapes["@stage1"][1]


def test_fsp_channel_mismatch_connector_or_clear_error():
    term = build("fsp")  # student 6/8/8 channels, teacher 10/12/16: student-side 1x1 connectors
    assert all(isinstance(m, nn.Sequential) for m in term.connectors.values())
    with pytest.raises(KDLabError, match="equal channels"):
        build("fsp", connector="none")


def test_ab_matches_reference():
    g = torch.Generator().manual_seed(5)
    term = build("ab", t_shapes=same(S_SHAPES), connector="identity")
    s, t = feats(S_SHAPES, 3, g), feats(S_SHAPES, 3, g)
    m, n, want = 1.0, 3, 0.0
    for i, k in enumerate(["@pre_stage1", "@pre_stage2", "@pre_stage3"]):
        acc = 0.0
        for a, b in zip(s[k].flatten().tolist(), t[k].flatten().tolist()):
            if b <= 0 and a > -m:
                acc += (a + m) ** 2
            elif b > 0 and a <= m:
                acc += (a - m) ** 2
        want += 2.0 ** (i - n + 1) * acc / 3
    assert term(context(s, t, 3))["loss"].item() == pytest.approx(want, rel=1e-5)
    assert TERMS.get("ab").Params().weight == pytest.approx(3 / 1000)


def test_ab_default_connector_is_identity_on_equal_shapes_else_conv_bn():
    term = build("ab", t_shapes={**T_SHAPES, "@pre_stage2": S_SHAPES["@pre_stage2"]})  # only stage 2 matches
    kinds = [type(c).__name__ for c in term.connectors.values()]
    assert kinds == ["Sequential", "Identity", "Sequential"]  # as RepDistiller's Connector
    assert [type(m) for m in term.connectors["l0"]] == [nn.Conv2d, nn.BatchNorm2d]  # the paper's 1x1 conv + BN


def test_ft_pretrain_is_reconstruction_and_transfer_is_l1_of_normalised_factors():
    g = torch.Generator().manual_seed(6)
    pre = build("ft", mode="pretrain", pretrained=False)
    assert pre.p.weight == 1.0 and pre.taps().student == ()
    s, t = feats(S_SHAPES, 2, g), feats(T_SHAPES, 2, g)
    _, rec = pre.paraphraser(t["@last"])
    a, b = rec.double().flatten().tolist(), t["@last"].double().flatten().tolist()
    assert pre(context(s, t, 2))["loss"].item() == pytest.approx(
        sum((x - y) ** 2 for x, y in zip(a, b)) / len(a), rel=1e-5
    )
    pre.train()
    pre(context(s, t, 2))  # one training step counted: the transfer term will know it was pre-trained
    pre.eval()
    with pytest.warns(UserWarning, match="never pre-trained"):
        build("ft", pretrained=False)(context(s, t, 2))
    tr = build("ft", pretrained=False)
    tr.load_state_dict(pre.state_dict(), strict=False)
    assert int(tr.pretrain_steps) == 2  # both training-mode calls above were counted
    assert tr.p.weight == 200.0
    assert not any(p.requires_grad for p in tr.paraphraser.parameters())
    tr.eval()
    fs = tr.translator(s["@last"]).double()
    ft = pre.paraphraser.encoder(t["@last"]).double()

    def factor(f, i):  # channel mean of squares over (H, W), L2-normalised
        q = [
            sum(f[i, c, y, x].item() ** 2 for c in range(f.shape[1])) / f.shape[1]
            for y in range(f.shape[2])
            for x in range(f.shape[3])
        ]
        nq = math.sqrt(sum(v * v for v in q)) or 1.0
        return [v / nq for v in q]

    diffs = [abs(u - v) for i in range(2) for u, v in zip(factor(fs, i), factor(ft, i))]
    assert tr(context(s, t, 2))["loss"].item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-5)
    flat = build("ft", factor="flat")
    flat.load_state_dict(tr.state_dict())
    flat.eval()
    want = 0.0
    for i in range(2):
        u, v = fs[i].flatten().tolist(), ft[i].flatten().tolist()
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        want += sum(abs(x / nu - y / nv) for x, y in zip(u, v)) / 2
    assert flat(context(s, t, 2))["loss"].item() == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------------- generic properties


def term_params(name):
    return {"ft": {}, "fsp": {}}.get(name, {})


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_and_connectors_never_the_teacher(name):
    g = torch.Generator().manual_seed(7)
    term = build(name)
    term.train()
    s = {k: v.requires_grad_() for k, v in feats(S_SHAPES, 4, g).items()}
    # teacher features come out of a teacher "model" whose parameters require grad: the term must detach them
    teacher = nn.ModuleDict({k.strip("@"): nn.Conv2d(3, T_SHAPES[k][0], 1) for k in T_SHAPES})
    x = torch.randn(4, 3, 8, 8, generator=g)
    t = {k: nn.functional.adaptive_avg_pool2d(teacher[k.strip("@")](x), T_SHAPES[k][1:]) for k in T_SHAPES}
    loss = term(context(s, t))["loss"]
    loss.backward()
    used = term.taps().student
    assert used and all(s[k].grad is not None and s[k].grad.abs().sum() > 0 for k in used)
    assert all(p.grad is None for p in teacher.parameters())
    trainable = [(n, p) for n, p in term.named_parameters() if p.requires_grad]
    assert bool(trainable) == (name not in ("at", "nst")), "connectors/heads are trainable; AT and NST have none"
    assert all(p.grad is not None for n, p in trainable if not n.startswith("paraphraser")), [
        n for n, p in trainable if p.grad is None
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_finite_in_low_precision(name, dtype):
    g = torch.Generator().manual_seed(8)
    term = build(name)
    s = {k: v.requires_grad_() for k, v in feats(S_SHAPES, 4, g, dtype, scale=30.0).items()}
    t = feats(T_SHAPES, 4, g, dtype, scale=30.0)
    loss = term(context(s, t))["loss"]
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(s[k].grad).all() for k in term.taps().student)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one_and_all_zero_features(name):
    g = torch.Generator().manual_seed(9)
    term = build(name)
    term.eval()  # BN in the connectors cannot train on a single sample; eval mode is what a batch of 1 sees
    for zero in (False, True):
        s = {k: v.requires_grad_() for k, v in feats(S_SHAPES, 1, g, zero=zero).items()}
        t = feats(T_SHAPES, 1, g, zero=zero)
        loss = term(context(s, t, 1))["loss"]
        loss.backward()
        assert torch.isfinite(loss), (name, zero)
        assert all(torch.isfinite(s[k].grad).all() for k in term.taps().student), (name, zero)
    term.train()  # and an all-zero batch of 2 in training mode
    s = {k: v.requires_grad_() for k, v in feats(S_SHAPES, 2, g, zero=True).items()}
    loss = term(context(s, feats(T_SHAPES, 2, g, zero=True), 2))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(s[k].grad).all() for k in term.taps().student)


def test_at_of_identical_maps_is_zero_and_of_zero_maps_not_nan():
    x = torch.randn(2, 4, 4, 4)
    term = build(
        "at",
        {k: (4, 4, 4) for k in ("@stage1", "@stage2", "@stage3")},
        {k: (4, 4, 4) for k in ("@stage1", "@stage2", "@stage3")},
    )
    same_feats = {k: x for k in ("@stage1", "@stage2", "@stage3")}
    assert term(context(same_feats, same_feats, 2))["loss"].item() == pytest.approx(0.0, abs=1e-9)
    z = {k: torch.zeros(2, 4, 4, 4) for k in same_feats}
    assert term(context(z, z, 2))["loss"].item() == 0.0


def test_vector_taps_are_refused_by_map_methods():
    with pytest.raises(KDLabError, match="feature map"):
        build("at", {"@p": (8,)}, {"@p": (8,)}, layers=["@p"])


def test_every_term_is_registered_with_paper():
    entries = {e.name: e for e in TERMS.entries()}
    for name in NAMES:
        assert entries[name].paper and entries[name].description, name


# ----------------------------------------------------------------------------------------------- end to end


def test_two_stage_ft_run_carries_the_paraphraser_over(tmp_path):
    """Stage 1 pre-trains FT's paraphraser alone (student frozen); stage 2 trains the student with CE and every
    feature term. The paraphraser is the stage-1 one (carried over, then frozen)."""
    two = ["@stage1", "@stage2"]
    recipe = load_recipe(
        {
            "name": "features",
            "out": str(tmp_path),
            "seed": 0,
            "data": {"name": "digits", "batch_size": 256},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
            "objective": {"ce": {}},
            "schedule": {"epochs": 1},
            "train": {"tensorboard": False},
            "stages": [
                {"name": "paraphrase", "epochs": 1, "trainable": [], "objective": {"ft": {"mode": "pretrain"}}},
                {
                    "name": "distill",
                    "epochs": 1,
                    "objective": {
                        "ce": {},
                        "ft": {},
                        "fitnet": {},
                        "at": {"layers": two},
                        "nst": {"layers": two},
                        "vid": {"layers": two},
                        "fsp": {"layers": two},
                        "ab": {"layers": ["@pre_stage1", "@pre_stage2"]},
                    },
                },
            ],
        }
    )
    seen: dict = {}

    class Spy:
        def on_step_end(self, trainer, state):
            ft = trainer._prev_objectives[0].terms["ft"]
            para = {k: v.detach().clone() for k, v in ft.paraphraser.state_dict().items()}
            if state["stage"] == 0 and state["step"] == 0:
                seen["student0"] = {k: v.clone() for k, v in trainer.students[0].state_dict().items()}
            if state["stage"] == 0:
                seen["end_of_1"], seen["obj1"] = para, ft
                seen["student_end_1"] = {k: v.clone() for k, v in trainer.students[0].state_dict().items()}
            elif "first_of_2" not in seen:
                seen["first_of_2"], seen["obj2"] = para, ft
            else:
                seen["last_of_2"] = para

    run_recipe(recipe, callbacks=[Spy()], quiet=True)
    assert seen["obj1"] is not seen["obj2"] and seen["obj1"].p.mode == "pretrain" and seen["obj2"].p.mode == "transfer"
    for k, v in seen["end_of_1"].items():  # carried over into the new stage's term, and frozen there
        assert torch.equal(v, seen["first_of_2"][k]) and torch.equal(v, seen["last_of_2"][k]), k
    # the student did not train in the paraphrase stage (`trainable: []`): its weights stay put (BN statistics move)
    assert all(
        torch.equal(v, seen["student_end_1"][k])
        for k, v in seen["student0"].items()
        if "running" not in k and "num_batches" not in k
    )
    (metrics,) = tmp_path.rglob("metrics.jsonl")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    rec1 = next(r for r in records if r.get("stage") == "paraphrase")
    rec2 = next(r for r in records if r.get("stage") == "distill")
    assert math.isfinite(rec1["train/ft"])
    for label in ("ce", "ft", "fitnet", "at", "nst", "vid", "fsp", "ab"):
        assert math.isfinite(rec2[f"train/{label}"]), label
