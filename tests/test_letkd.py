"""letKD: the inserted layer, template fitting, the two KL terms, export and the engine path (digits, CPU)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from kdlab.capture import Capture
from kdlab.engine import resume_run, run_recipe
from kdlab.errors import KDLabError
from kdlab.export import export_run, load_exported
from kdlab.layers import insert_layers
from kdlab.layers import templates as T
from kdlab.layers.letkd import LetKDLayer
from kdlab.methods.base import SetupInfo, StepContext
from kdlab.methods.letkd import LetKDInter, LetKDPenult
from kdlab.models import build_model
from kdlab.recipe import InsertSpec, load_recipe
from kdlab.registry import LAYERS
from kdlab.teacher import TeacherOutput


def _resnet8(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet8", num_classes=10, input_shape=(3, 16, 16))


def _with_layer(alpha, templates=32, seed=0):
    m = _resnet8(seed)
    torch.manual_seed(123)
    return insert_layers(
        m,
        [InsertSpec(at="@last", layer="letkd", kwargs={"templates": templates, "alpha": alpha})],
        input_shape=(3, 16, 16),
        num_classes=10,
    )


def _copy_into_inserted(base, model):
    """The unmodified student's weights into the student with a layer at layer3 (layer3.* -> layer3.inner.*)."""
    sd = {
        (("layer3.inner." + k[len("layer3.") :]) if k.startswith("layer3.") else k): v
        for k, v in base.state_dict().items()
    }
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("layer3.layer.") for k in missing)


# ---------------------------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("train", [False, True])
def test_alpha_zero_gives_the_unmodified_students_outputs(train):
    base, model = _resnet8(), _with_layer(alpha=0.0)
    _copy_into_inserted(base, model)
    base.train(train), model.train(train)
    x = torch.randn(6, 3, 16, 16)
    cap = Capture(model, ["layer3.layer.scores"])
    assert torch.equal(model(x), base(x))
    assert cap.pop()["layer3.layer.scores"].shape == (6, 32, 4, 4)  # the scores still exist for a KL term
    cap.remove()
    if train:  # the student's own BatchNorm statistics moved identically
        b = dict(base.named_buffers())
        for k, v in model.named_buffers():
            if not k.startswith("layer3.layer."):
                assert torch.equal(v, b[k.replace("layer3.inner.", "layer3.")]), k
    # and alpha = 1 does change the outputs
    one = _with_layer(alpha=1.0)
    _copy_into_inserted(base, one)
    one.train(train)
    assert not torch.allclose(one(x), base(x))


def test_layer_parameters_formula_scale_invariance_and_init():
    layer = LAYERS.get("letkd")(channels=16, num_classes=10, templates=24)
    n = sum(p.numel() for p in layer.parameters())
    assert n == 2 * 24 * 16 + 2 * 24 + 2
    assert layer.scores.scale.item() == 3.0 and layer.value.scale.item() == 1.0
    assert LAYERS.get("letkd")(channels=16, num_classes=10, templates_per_class=8).templates == 80
    assert LAYERS.get("letkd")(channels=16, num_classes=10).templates == 4096
    x = torch.rand(3, 16, 5, 5) + 0.1
    assert torch.allclose(layer.scores(x), layer.scores(7.5 * x), atol=1e-5)  # cosine: input scale is irrelevant
    # a = s1 * cos(w_k, x) at every location, by hand
    w = layer.scores.weight.detach()
    xv = x.permute(0, 2, 3, 1).reshape(-1, 16)
    cos = (xv / xv.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
    assert torch.allclose(T.to_locations(layer.scores(x)), 3.0 * cos, atol=1e-5)
    with pytest.raises(KDLabError, match="unknown argument"):
        LAYERS.get("letkd")(channels=16, num_classes=10, template=3)
    # vectors (B, C) go through as maps of size 1x1 and keep their shape
    assert LetKDLayer(16, 8)(torch.randn(4, 16)).shape == (4, 16)


def test_cosine_conv_weights_are_drawn_n0_2_over_fan_in_as_the_authors():
    torch.manual_seed(0)
    big = LetKDLayer(64, 4096)  # C = 64, K = 4096: scores 64 -> 4096 (fan-in 64), value 4096 -> 64 (fan-in 4096)
    for conv, fan_in in ((big.scores, 64), (big.value, 4096)):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.02)


def test_gradients_reach_every_layer_parameter_and_not_the_teacher():
    model = _with_layer(alpha=1.0)
    teacher = build_model("resnet8", num_classes=10, input_shape=(3, 16, 16))  # NOT frozen: the term must detach
    term = LetKDPenult(LetKDPenult.Params(student_layer="layer3", teacher_layer="@last"))
    s_cap, t_cap = Capture(model, term.taps().student), Capture(teacher, term.taps().teacher)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    term.setup(
        {"layer3.layer.scores": torch.Size([32, 4, 4])},
        {"@last": torch.Size([64, 4, 4])},
        SetupInfo(num_train=8, num_classes=10, input_shape=(3, 16, 16)),
    )
    term.centres.copy_(torch.randn(32, 64))
    t_logits = teacher(x)
    ctx = StepContext(
        x=x,
        y=y,
        idx=torch.arange(8),
        s_logits=model(x),
        s_feats=s_cap.pop(),
        teacher_outputs=[TeacherOutput(t_logits, t_cap.pop())],
    )
    loss = F.cross_entropy(ctx.s_logits, y) + term(ctx)["loss"]
    loss.backward()
    layer = model.layer3.layer
    for name, p in [
        ("W1", layer.scores.weight),
        ("s1", layer.scores.scale),
        ("W2", layer.value.weight),
        ("s2", layer.value.scale),
        ("bn.gamma", layer.bn.weight),
        ("bn.beta", layer.bn.bias),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    # the KL alone reaches only the scores (W1, s1) and the student below the layer
    model.zero_grad(set_to_none=True)
    model(x)
    term(
        StepContext(
            x=x, y=y, idx=torch.arange(8), s_logits=t_logits, s_feats=s_cap.pop(), teacher_outputs=ctx.teacher_outputs
        )
    )["loss"].backward()
    assert layer.scores.weight.grad.abs().sum() > 0 and layer.value.weight.grad is None
    assert model.layer3.inner[0].conv2.weight.grad.abs().sum() > 0 and model.fc.weight.grad is None
    s_cap.remove(), t_cap.remove()


# ---------------------------------------------------------------------------------------------- templates


def _blobs(seed=0, n=400, d=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes * 2, d, generator=g) * 4
    sub = torch.randint(0, 2, (n,), generator=g)
    return centres[y * 2 + sub] + torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_templates_are_deterministic_for_a_seed(backend):
    x, y = _blobs()
    a = T.fit_penult(x, 8, seed=0, backend=backend)
    b = T.fit_penult(x, 8, seed=0, backend=backend)
    c = T.fit_penult(x, 8, seed=1, backend=backend)
    assert torch.equal(a["centres"], b["centres"]) and not torch.equal(a["centres"], c["centres"])
    s1 = T.fit_subclass(x, y, 3, 3, seed=0, n_components=2, backend=backend)
    s2 = T.fit_subclass(x, y, 3, 3, seed=0, n_components=2, backend=backend)
    s3 = T.fit_subclass(x, y, 3, 3, seed=5, n_components=2, backend=backend)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert not torch.equal(s1["centres"], s3["centres"])


def test_kmeans_backends_converge():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = true[torch.arange(400) % 4] + 0.1 * torch.randn(400, 2, generator=g)
    c, lab = T.kmeans(x, 4, seed=3, backend="sklearn")  # k-means++ init finds the four blobs
    assert (T.sq_dists(true, c).min(1).values < 0.01).all() and torch.equal(lab, T.nearest(x, c))
    # torch Lloyd (random init, as faiss): a fixed point — labels are the nearest centres, centres the member means
    x2, _ = _blobs(seed=4, n=500)
    c, lab = T.kmeans(x2, 7, seed=3, backend="torch", iters=50)
    assert torch.equal(lab, T.nearest(x2, c))
    for k in range(7):
        assert torch.allclose(c[k], x2[lab == k].mean(0), atol=1e-4)
    with pytest.raises(KDLabError, match="only 5 teacher vectors"):
        T.kmeans(x2[:5], 7, seed=0)


def test_confusion_matrix_matches_a_hand_computed_example():
    member = torch.tensor([0, 0, 0, 1, 1, 2])
    near = torch.tensor([0, 1, 1, 1, 1, 0])
    s = T.confusion(member, near, 4)
    expect = torch.tensor([[1 / 3, 2 / 3, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # row 3: nobody -> e_3
    assert torch.allclose(s, expect)
    assert torch.allclose(s.sum(1), torch.ones(4))


def test_subclass_fit_matches_an_independent_recomputation():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x, y = _blobs(seed=2, n=600, d=5, classes=4)
    fit = T.fit_subclass(x, y, 4, 3, seed=0, n_components=3)
    s = fit["s_T"]
    assert s.shape == (12, 12) and torch.allclose(s.sum(1), torch.ones(12)) and (s >= 0).all()
    lda = LinearDiscriminantAnalysis(n_components=3).fit(x.double().numpy(), y.numpy())
    z = lda.transform(x.double().numpy())
    assert np.allclose(((x - fit["lda_mean"]) @ fit["lda_w"]).numpy(), z, atol=1e-4)
    cen, pro = fit["centres"].double().numpy(), fit["prototypes"].double().numpy()
    counts = np.zeros((12, 12))
    for i in range(len(z)):
        c = int(y[i])
        own = ((z[i] - cen[c * 3 : (c + 1) * 3]) ** 2).sum(1)
        m = c * 3 + int(own.argmin())  # membership: nearest own-class centre == the per-class k-means label
        n = int(((z[i] - pro) ** 2).sum(1).argmin())  # nearest prototype, no label mask
        counts[m, n] += 1
    assert np.allclose(counts.sum(1), fit["counts"].numpy())
    member = np.array(
        [
            int(y[i]) * 3 + int(((z[i] - cen[int(y[i]) * 3 : int(y[i]) * 3 + 3]) ** 2).sum(1).argmin())
            for i in range(len(z))
        ]
    )
    for k in range(12):  # prototypes are the member means (in LDA space)
        if (member == k).any():
            assert np.allclose(pro[k], z[member == k].mean(0), atol=1e-4)
    assert np.allclose(s.numpy(), counts / counts.sum(1, keepdims=True), atol=1e-6)


def test_cache_roundtrip_and_fingerprint(tmp_path):
    path = T.cache_path(tmp_path, "x")
    T.save_cached(path, {"a": torch.arange(3.0)}, {"k": 1})
    assert torch.equal(T.load_cached(path, {"k": 1})["a"], torch.arange(3.0))
    assert T.load_cached(path, {"k": 2}) is None and T.load_cached(T.cache_path(tmp_path, "y"), {"k": 1}) is None


def test_tau_calibration_hits_the_entropy():
    x, _ = _blobs()
    fit = T.fit_penult(x, 8, seed=0, entropy=1.2)
    d = T.sq_dists(x, fit["centres"])
    assert T.target_entropy(d, float(fit["tau"])) == pytest.approx(1.2, abs=1e-3)
    assert float(fit["entropy"]) == pytest.approx(1.2, abs=1e-3)


# ---------------------------------------------------------------------------------------------- the KL terms


def _kl_rows(p, a):
    """sum_k p log(p / softmax(a)) per row, with 0 log 0 = 0, in float64 loops."""
    out = []
    for pi, ai in zip(p.double().tolist(), a.double().tolist()):
        m = max(ai)
        lse = m + math.log(sum(math.exp(v - m) for v in ai))
        out.append(sum(pk * (math.log(pk) - (ak - lse)) for pk, ak in zip(pi, ai) if pk > 0))
    return out


def test_penultimate_kl_equals_the_formula_with_2x2_teacher_pooling():
    torch.manual_seed(0)
    term = LetKDPenult(LetKDPenult.Params(student_layer="s", teacher_layer="t", tau=0.5))
    term.setup(
        {"s.layer.scores": torch.Size([5, 2, 2])},
        {"t": torch.Size([3, 4, 4])},
        SetupInfo(num_train=1, num_classes=10, input_shape=(1, 8, 8)),
    )
    rho = torch.randn(5, 3)
    term.centres.copy_(rho)
    a, f = torch.randn(2, 5, 2, 2), torch.randn(2, 3, 4, 4)
    ctx = StepContext(
        x=a,
        y=torch.zeros(2, dtype=torch.long),
        idx=torch.arange(2),
        s_logits=a,
        s_feats={"s.layer.scores": a},
        teacher_outputs=[TeacherOutput(None, {"t": f})],
    )
    got = float(term(ctx)["loss"])
    kls = []
    for b in range(2):
        for i in range(2):
            for j in range(2):
                ft = f[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].double().mean((1, 2))  # 2x2 average pool
                d = [float(((ft - rho[k].double()) ** 2).sum()) for k in range(5)]
                e = [math.exp(-0.5 * v) for v in d]
                p = torch.tensor([v / sum(e) for v in e])
                kls += _kl_rows(p[None], a[b, :, i, j][None])
    assert got == pytest.approx(sum(kls) / len(kls), rel=1e-5)


def test_intermediate_kl_uses_the_label_masked_nearest_centre_row_of_s_T():
    torch.manual_seed(1)
    classes, per = 3, 2
    term = LetKDInter(LetKDInter.Params(student_layer="s", teacher_layer="t", lda_components=2))
    term.setup(
        {"s.layer.scores": torch.Size([6, 2, 2])},
        {"t": torch.Size([4, 2, 2])},
        SetupInfo(num_train=1, num_classes=classes, input_shape=(1, 8, 8)),
    )
    mean, w, cen = torch.randn(4), torch.randn(4, 2), torch.randn(6, 2)
    s_t = torch.softmax(torch.randn(6, 6), 1)
    s_t[0] = torch.tensor([0.5, 0.5, 0, 0, 0, 0])  # zeros in a target row contribute nothing
    for k, v in {"lda_mean": mean, "lda_w": w, "centres": cen, "s_T": s_t}.items():
        getattr(term, k).copy_(v)
    a, f, y = torch.randn(3, 6, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 2, 1])
    ctx = StepContext(
        x=a,
        y=y,
        idx=torch.arange(3),
        s_logits=a,
        s_feats={"s.layer.scores": a},
        teacher_outputs=[TeacherOutput(None, {"t": f})],
    )
    got = float(term(ctx)["loss"])
    kls = []
    for b in range(3):
        for i in range(2):
            for j in range(2):
                z = (f[b, :, i, j] - mean) @ w
                c = int(y[b])
                ks = [c * per + q for q in range(per)]
                k_star = min(ks, key=lambda k: float(((z - cen[k]) ** 2).sum()))
                kls += _kl_rows(s_t[k_star][None], a[b, :, i, j][None])
    assert got == pytest.approx(sum(kls) / len(kls), rel=1e-5)


# ---------------------------------------------------------------------------------------------- engine


def _digits_letkd2(out, epochs=1):
    """recipes/digits/letkd2.yaml merged over a 300-image digits base with an (untrained) in-memory teacher."""
    base = {
        "name": "ce",
        "out": str(out),
        "seed": 1,
        "data": {"name": "digits", "batch_size": 128, "kwargs": {"train_subset": 300}},
        "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
        "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
        "schedule": {"epochs": epochs, "milestones": []},
        "objective": {"ce": {}},
        "train": {"tensorboard": False, "progress": False},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return load_recipe([path, "recipes/digits/letkd2.yaml"])


def test_letkd2_smoke_run_and_export_without_the_teacher(tmp_path, monkeypatch):
    s = run_recipe(_digits_letkd2(tmp_path), quiet=True)
    d = tmp_path / "letkd2" / "seed1"
    assert (d / "templates-letkd_penult.safetensors").exists() and (d / "templates-letkd_inter.safetensors").exists()
    import json

    rec = json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(rec["train/letkd_penult"]) and math.isfinite(rec["train/letkd_inter"])
    assert 0 <= s["final"]["test/top1"] <= 1
    out = export_run(d, tmp_path / "student.safetensors")

    import kdlab.engine.run as engine_run
    import kdlab.teacher as teacher_mod

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was touched")

    monkeypatch.setattr(engine_run, "load_teacher", no_teacher)
    monkeypatch.setattr(teacher_mod.Teacher, "__init__", no_teacher)
    exported = load_exported(out)
    keys = set(load_file(str(out)))
    assert "relu2.layer.scores.weight" in keys and "relu1.layer.value.scale" in keys
    assert not any("centres" in k or "s_T" in k for k in keys)
    # the trained student, rebuilt from the run's own recipe and weights
    r = load_recipe(d / "recipe.yaml")
    trained = build_model("smallcnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    insert_layers(trained, r.student.insert, input_shape=(1, 8, 8), num_classes=10)
    trained.load_state_dict(load_file(str(d / "student.safetensors")))
    trained.eval()
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(exported(x), trained(x))
    assert isinstance(exported.relu2.layer, LetKDLayer) and exported.relu2.layer.templates == 64


class _Crash:
    def on_step_end(self, trainer, state):
        if (state["global_epoch"], state["step"]) == (1, 0):
            raise RuntimeError("simulated crash")


def test_cached_templates_are_reused_on_resume(tmp_path, monkeypatch):
    run_recipe(_digits_letkd2(tmp_path / "a", epochs=2), quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(_digits_letkd2(tmp_path / "b", epochs=2), callbacks=[_Crash()], quiet=True)
    b = tmp_path / "b" / "letkd2" / "seed1"
    before = {
        f: load_file(str(b / f)) for f in ("templates-letkd_penult.safetensors", "templates-letkd_inter.safetensors")
    }

    def refit(*a, **k):
        raise AssertionError("templates refitted instead of reloaded")

    monkeypatch.setattr(T, "fit_penult", refit)
    monkeypatch.setattr(T, "fit_subclass", refit)
    monkeypatch.setattr(T, "kmeans", refit)
    resume_run(b, quiet=True)
    for f, tensors in before.items():
        after = load_file(str(b / f))
        assert all(torch.equal(tensors[k], after[k]) for k in tensors), f
    wa = load_file(str(tmp_path / "a" / "letkd2" / "seed1" / "student.safetensors"))
    wb = load_file(str(b / "student.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the resumed run is the uninterrupted one


def test_recipes_compose_with_the_pair_files():
    for method, extra in [("letkd1", []), ("letkd2", ["letkd_inter"])]:
        r = load_recipe(["recipes/cifar100/resnet32x4-resnet8x4.yaml", f"recipes/methods/{method}.yaml"])
        assert r.student.name == "resnet8x4" and r.student.insert[-1].at == "@last"
        assert set(r.objective) == {"ce", "letkd_penult", *extra}
        model = build_model("resnet8x4", num_classes=100, input_shape=(3, 32, 32))
        insert_layers(model, r.student.insert, input_shape=(3, 32, 32), num_classes=100)
        names = dict(model.named_modules())
        for label in ("letkd_penult", *extra):
            term = r.objective[label].build()
            assert term.scores_tap in names, (label, term.scores_tap)
        assert names["layer3.layer"].templates == 4096
        if extra:
            assert names["layer3.inner.0.layer"].templates == 800
    r = load_recipe(["recipes/digits/pair.yaml", "recipes/digits/letkd2.yaml"])
    assert r.objective["letkd_penult"].build().p.target_entropy == 1.5


def test_combines_with_fitnet(tmp_path):
    """Table 6: FitNet hints next to a supervised KD layer (one objective, one epoch, finite losses)."""
    r = _digits_letkd2(tmp_path)
    rec = r.model_dump()
    rec["student"]["insert"] = rec["student"]["insert"][1:]  # the penultimate layer only
    rec["objective"] = {
        "ce": {},
        "fitnet": {"student_layer": "@stage1", "teacher_layer": "@stage1"},
        "letkd_penult": {"student_layer": "relu2", "target_entropy": 1.5},
    }
    rec["name"] = "fitnet_letkd"
    run_recipe(load_recipe(rec), quiet=True)
    import json

    last = json.loads((tmp_path / "fitnet_letkd" / "seed1" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(last["train/fitnet"]) and math.isfinite(last["train/letkd_penult"])


def test_cifar_method_recipe_runs_on_a_resnet_pair(tmp_path):
    """recipes/methods/letkd2.yaml as written (paths layer3.0 / layer3.inner.0 / layer3), on 8x8 digits with small
    resnets and digits-sized K, through the engine."""
    base = {
        "name": "ce",
        "out": str(tmp_path),
        "seed": 0,
        "data": {"name": "digits", "batch_size": 128, "kwargs": {"train_subset": 200}},
        "student": {"name": "resnet8"},
        "teacher": {"model": {"name": "resnet14"}},
        "schedule": {"epochs": 1, "milestones": []},
        "objective": {"ce": {}},
        "train": {"tensorboard": False, "progress": False},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    r = load_recipe(
        [path, "recipes/methods/letkd2.yaml"],
        [
            "student.insert.0.kwargs.templates_per_class=2",
            "student.insert.1.kwargs.templates=16",
            "objective.letkd_inter.lda_components=9",
        ],
    )
    run_recipe(r, quiet=True)
    d = tmp_path / "letkd2" / "seed0"
    inter = load_file(str(d / "templates-letkd_inter.safetensors"))
    assert inter["s_T"].shape == (20, 20) and inter["lda_w"].shape == (64, 9)
    assert load_file(str(d / "templates-letkd_penult.safetensors"))["centres"].shape == (16, 64)
    keys = set(load_file(str(d / "student.safetensors")))
    assert "layer3.inner.0.layer.scores.weight" in keys and "layer3.layer.value.weight" in keys
