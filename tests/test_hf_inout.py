"""Hugging Face models in and out: a saved sequence classifier keeps its trained head as a kdlab model (same
logits as transformers' own), missing weights are errors or one-line warnings, a ``head: hf`` student saves to
a folder that ``AutoModelForSequenceClassification`` loads to the same logits, and a transformers model from a
user factory works as a kdlab model. Tiny BERTs built from a config: nothing is downloaded."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from kdlab.errors import KDLabError  # noqa: E402
from kdlab.models import build_model  # noqa: E402
from kdlab.models.hf import HFClassifier, adapt_model, save_pretrained_classifier  # noqa: E402

L, VOCAB = 12, 40


def _config(**kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=0,
        **kw,
    )


def _ids(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, L), generator=g)
    for i in range(n):  # different amounts of padding at the end
        if i:
            ids[i, L - i :] = 0
    return ids


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A 'fine-tuned' 3-label BERT classifier saved with save_pretrained (random but fixed weights)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    model = BertForSequenceClassification(_config(num_labels=3)).eval()
    with torch.no_grad():  # a head far from any fresh initialisation
        model.classifier.weight.mul_(50.0)
        model.classifier.bias.copy_(torch.tensor([3.0, -2.0, 1.0]))
    path = tmp_path_factory.mktemp("hf") / "clf"
    model.save_pretrained(str(path))
    return path, model


def _reference_logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=(ids != 0).long()).logits


def test_a_saved_classifier_keeps_its_trained_head(classifier_dir):
    path, ref = classifier_dir
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was newly initialised: no warning at all
        m = build_model("hf_classifier", num_classes=3, input_shape=(L,), path=str(path))
    assert isinstance(m, HFClassifier) and m.head_mode == "hf"
    ids = _ids()
    with torch.no_grad():
        got = m.eval()(ids)
    assert torch.allclose(got, _reference_logits(ref, ids), atol=1e-5)
    with torch.no_grad():  # the other input paths of a kdlab text model give the same logits
        assert torch.allclose(m(m.embed(ids)), got, atol=1e-5)
        assert torch.allclose(m(torch.nn.functional.one_hot(ids, VOCAB).float()), got, atol=1e-5)
    assert m.kdlab_taps["penultimate"] == "encoder.classifier:in"
    assert m.kdlab_taps["stage2"] == "encoder.bert.encoder.layer.1"
    kd = build_model("hf_classifier", num_classes=3, input_shape=(L,), path=str(path), head="kdlab")
    assert kd.head_mode == "kdlab" and kd.kdlab_taps["stage1"] == "encoder.encoder.layer.0"


def test_the_frozen_teacher_gives_transformers_logits(classifier_dir):
    try:
        from kdlab.teachers import Teacher
    except ImportError:
        from kdlab.teacher import Teacher
    path, ref = classifier_dir
    teacher = Teacher(build_model("hf_classifier", num_classes=3, input_shape=(L,), path=str(path)))
    ids = _ids(seed=3)
    out = teacher(ids)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    logits = out[0] if logits is None else logits
    assert torch.allclose(logits, _reference_logits(ref, ids), atol=1e-5)


def test_label_count_and_missing_weights_are_one_line_errors(classifier_dir, tmp_path):
    path, ref = classifier_dir
    with pytest.raises(KDLabError, match=r"classifier of 3 labels but the dataset has 2 classes"):
        build_model("hf_classifier", num_classes=2, input_shape=(L,), path=str(path))
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    ref.save_pretrained(str(broken))
    state = load_file(str(broken / "model.safetensors"))
    head = [k for k in state if "classifier" in k]
    assert head
    save_file(
        {k: v for k, v in state.items() if k not in head}, str(broken / "model.safetensors"), metadata={"format": "pt"}
    )
    with pytest.raises(KDLabError, match=r"trained sequence classifier but 2 of its weights are missing .*classifier"):
        build_model("hf_classifier", num_classes=3, input_shape=(L,), path=str(broken))


def test_an_encoder_folder_with_head_hf_says_the_head_is_new(tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(_config()).save_pretrained(str(tmp_path / "enc"))
    with pytest.warns(UserWarning, match=r"initialised randomly \(.*classifier"):
        m = build_model("hf_classifier", num_classes=4, input_shape=(L,), path=str(tmp_path / "enc"), head="hf")
    assert m.head_mode == "hf" and m(_ids()).shape == (6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kdlab's own head on an encoder: expected, silent
        assert (
            build_model("hf_classifier", num_classes=4, input_shape=(L,), path=str(tmp_path / "enc")).head_mode
            == "kdlab"
        )


def test_save_pretrained_round_trip_gives_the_same_logits(classifier_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    path, _ = classifier_dir
    m = build_model("hf_classifier", num_classes=3, input_shape=(L,), path=str(path))
    with torch.no_grad():  # as if trained by kdlab
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    diff = save_pretrained_classifier(m, tmp_path / "out", classes=["neg", "neu", "pos"])
    assert diff < 1e-5
    back = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    ids = _ids(seed=5)
    with torch.no_grad():
        assert torch.allclose(_reference_logits(back, ids), m.eval()(ids), atol=1e-5)
    assert back.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    kd = build_model("hf_classifier", num_classes=3, input_shape=(L,), path=str(path), head="kdlab")
    with pytest.raises(KDLabError, match=r"--format hf needs .*head: hf.*--format safetensors"):
        save_pretrained_classifier(kd, tmp_path / "out2")
    with pytest.raises(KDLabError, match="not an empty folder"):
        save_pretrained_classifier(m, tmp_path / "out")


def test_a_transformers_model_from_a_factory_is_a_kdlab_model(tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification, BertModel

    (tmp_path / "my_hf_models.py").write_text(
        "from transformers import BertConfig, BertForSequenceClassification, BertModel\n"
        "def make(num_classes, vocab=40):\n"
        "    cfg = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,\n"
        "                     intermediate_size=32, max_position_embeddings=32, pad_token_id=0,"
        " num_labels=num_classes)\n"
        "    return BertForSequenceClassification(cfg)\n"
        "def encoder():\n"
        "    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,\n"
        "                                intermediate_size=32, max_position_embeddings=32, pad_token_id=0))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_hf_models", raising=False)
    torch.manual_seed(0)
    m = build_model("my_hf_models:make", num_classes=3, input_shape=(L,))
    assert isinstance(m, HFClassifier) and m.head_mode == "hf"
    ids = _ids()
    with torch.no_grad():
        assert torch.allclose(m.eval()(ids), _reference_logits(m.encoder, ids), atol=1e-5)
        assert m(torch.zeros(2, L)).shape == (2, 3)  # the engine's all-zero float shape probe
    e = build_model("my_hf_models:encoder", num_classes=5, input_shape=(L,))
    assert isinstance(e, HFClassifier) and e.head_mode == "kdlab" and e(ids).shape == (6, 5)
    with pytest.raises(KDLabError, match=r"has 3 labels but the dataset has 4 classes"):
        adapt_model(BertForSequenceClassification(_config(num_labels=3)), 4)
    plain = torch.nn.Linear(2, 2)
    assert adapt_model(plain, 2) is plain and isinstance(adapt_model(BertModel(_config()), 2), HFClassifier)


def test_kdlab_export_format_hf_of_a_trained_text_student(classifier_dir, tmp_path):
    """hf_disk data, the saved classifier as teacher, a head: hf student from an encoder folder; one epoch of
    KD; `kdlab export --format hf` gives a folder AutoModelForSequenceClassification loads to the same logits."""
    hfds = pytest.importorskip("datasets")
    import inspect

    from transformers import AutoModelForSequenceClassification, BertModel, BertTokenizerFast

    from kdlab.cli import main
    from kdlab.engine import run_recipe
    from kdlab.export import load_run_student
    from kdlab.recipe import load_recipe

    words = [f"w{i}" for i in range(VOCAB - 5)]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tok = BertTokenizerFast(**{key: str(vocab)}, do_lower_case=True)
    torch.manual_seed(2)
    BertModel(_config()).save_pretrained(str(tmp_path / "enc"))
    tok.save_pretrained(str(tmp_path / "enc"))
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(j)] for j in torch.randint(0, len(words), (6,), generator=g)) for _ in range(30)]
    hfds.Dataset.from_dict({"text": texts, "label": [i % 3 for i in range(30)]}).save_to_disk(str(tmp_path / "d"))
    path, _ = classifier_dir
    recipe = load_recipe(
        {
            "name": "hfkd",
            "out": str(tmp_path / "runs"),
            "data": {
                "name": "hf_disk",
                "kwargs": {"root": str(tmp_path / "d"), "tokenizer": str(tmp_path / "enc"), "max_length": L},
                "batch_size": 8,
            },
            "student": {"name": "hf_classifier", "kwargs": {"path": str(tmp_path / "enc"), "head": "hf"}},
            "teacher": {"model": {"name": "hf_classifier", "kwargs": {"path": str(path)}}},
            "objective": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "tau": 4.0}},
            "optim": {"name": "adamw", "lr": 1e-3},
            "schedule": {"epochs": 1, "name": "constant"},
            "train": {"tensorboard": False},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the student's new head is announced; expected here
        summary = run_recipe(recipe, quiet=True)
        run = summary.get("run_dir") or str(next((tmp_path / "runs").rglob("summary.json")).parent)
        assert main(["export", str(run), "--out", str(tmp_path / "exported"), "--format", "hf"]) == 0
        student, record = load_run_student(run)
    back = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "exported"), local_files_only=True)
    assert back.config.id2label == {0: "0", 1: "1", 2: "2"}
    ids = _ids(seed=7)
    with torch.no_grad():
        assert torch.allclose(_reference_logits(back, ids), student(ids), atol=1e-5)
    assert (tmp_path / "exported" / "tokenizer.json").exists() or (tmp_path / "exported" / "vocab.txt").exists()
