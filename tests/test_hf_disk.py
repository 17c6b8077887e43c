"""``hf_disk``: a Hugging Face ``datasets`` folder written by save_to_disk as a text source (tiny data and a
tiny WordPiece tokenizer written to tmp_path; nothing is downloaded)."""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("transformers")
hfds = pytest.importorskip("datasets")

from kdlab.data import build_dataset  # noqa: E402
from kdlab.errors import KDLabError  # noqa: E402

WORDS = ["good", "great", "bad", "awful", "the", "film", "was", "plot"]
L = 10


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("tok")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{key: str(vocab)}, do_lower_case=True).save_pretrained(str(root / "t"))
    return str(root / "t")


def _rows(n, offset=0):
    texts = [f"the film was {WORDS[(i + offset) % 4]}" for i in range(n)]
    return texts, [0 if (i + offset) % 4 < 2 else 1 for i in range(n)]


def _expected_ids(tok_dir, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    return torch.tensor(tok(texts, truncation=True, max_length=L, padding="max_length")["input_ids"])


def test_a_dataset_dict_with_class_labels(tmp_path, tok_dir):
    feats = hfds.Features({"sentence": hfds.Value("string"), "y": hfds.ClassLabel(names=["pos", "neg"])})
    tr, te = _rows(12), _rows(4, offset=1)
    hfds.DatasetDict(
        {
            "train": hfds.Dataset.from_dict({"sentence": tr[0], "y": tr[1]}, features=feats),
            "validation": hfds.Dataset.from_dict({"sentence": te[0], "y": te[1]}, features=feats),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    d = build_dataset(
        "hf_disk", root=str(tmp_path / "dd"), text_column="sentence", label_column="y", tokenizer=tok_dir, max_length=L
    )
    assert d.classes == ["pos", "neg"] and d.num_classes == 2 and d.input_shape == (L,)
    assert torch.equal(d.train.x, _expected_ids(tok_dir, tr[0])) and d.train.y.tolist() == tr[1]
    assert torch.equal(d.test.x, _expected_ids(tok_dir, te[0])) and d.test.y.tolist() == te[1]
    assert d.mean == () and "validation" in d.notes
    sub = build_dataset(
        "hf_disk",
        root=str(tmp_path / "dd"),
        text_column="sentence",
        label_column="y",
        tokenizer=tok_dir,
        max_length=L,
        train_subset=6,
    )
    assert len(sub.train) == 6 and torch.bincount(sub.train.y).tolist() == [3, 3]


def test_a_single_dataset_with_plain_labels_is_split_stratified(tmp_path, tok_dir):
    texts, ys = _rows(20)
    hfds.Dataset.from_dict({"text": texts, "label": ["neg" if v else "pos" for v in ys]}).save_to_disk(
        str(tmp_path / "one")
    )
    d = build_dataset("hf_disk", root=str(tmp_path / "one"), tokenizer=tok_dir, max_length=L, test_fraction=0.25)
    assert d.classes == ["neg", "pos"] and len(d.train) == 15 and len(d.test) == 5
    assert sorted(torch.bincount(d.test.y).tolist()) == [2, 3]
    assert torch.equal(torch.cat([d.train.x, d.test.x]).unique(dim=0), _expected_ids(tok_dir, texts).unique(dim=0))


def test_hf_disk_errors(tmp_path, tok_dir):
    texts, ys = _rows(6)
    hfds.DatasetDict(
        {
            "train": hfds.Dataset.from_dict({"text": texts, "label": ys}),
            "test": hfds.Dataset.from_dict({"text": texts[:2], "label": [-1, -1]}),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(KDLabError, match="needs root"):
        build_dataset("hf_disk", tokenizer=tok_dir)
    with pytest.raises(KDLabError, match=r"no column 'sentence'; columns: text, label"):
        build_dataset("hf_disk", root=str(tmp_path / "dd"), text_column="sentence", tokenizer=tok_dir)
    with pytest.raises(KDLabError, match=r"no split 'dev'; splits: train, test"):
        build_dataset("hf_disk", root=str(tmp_path / "dd"), test_split="dev", tokenizer=tok_dir)
    with pytest.raises(KDLabError, match=r"\[test\] has labels outside the training classes.*hidden"):
        build_dataset("hf_disk", root=str(tmp_path / "dd"), tokenizer=tok_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDLabError, match="not a datasets save_to_disk folder"):
        build_dataset("hf_disk", root=str(tmp_path / "empty"), tokenizer=tok_dir)
