"""Backward-pass auxiliary samples for text (view ``backward_text``): the text side of ``backward``.

Jafari, Rezagholizadeh & Ghodsi, arXiv 2301.12006 — abstract only; the paper says applying the idea to
discrete text is "not trivial" and that it has a way, which is not public. This view is **our
reconstruction** (research note ``seeds-da-backward.md`` Method 2 §2.2 item 5, options a and b); label every
number obtained with it as such. The ascent is the image view's model-agnostic :func:`ascend` (same
divergence ``KL(p_t^τ ‖ p_s^τ)`` per sample, same step rules, same random-direction control), on one of two
continuous input spaces (``space``):

* ``embedding`` (note option a): the **student's** input embeddings ``e = E_s[ids]`` (N×L×d) are perturbed
  and fed to *both* models as input embeddings. Only meaningful when teacher and student share tokenizer and
  embedding width (e.g. a student initialised from the teacher's embeddings); unequal widths are a KDLabError.
  ``eta`` (l2 rule) is the per-position RMS L2 norm of the step as a *fraction of the mean token-embedding norm*
  of the batch (unit-free): ``h = eta·ref/sqrt(d)`` per element, ref = mean ‖e‖ over the perturbed positions.
* ``relaxed`` (note option b; the MATE-KD way of feeding soft tokens, Rashid et al. 2021): start from one-hot
  token distributions ``q`` (N×L×V), ascend on ``q`` and feed ``q`` to each model, which multiplies it by its
  **own** embedding matrix (``q @ E``). Works whenever the vocabularies match (checked). ``eta`` (l2 rule) is
  the per-position RMS L2 norm of the step in distribution space (a one-hot has norm 1): the step is taken over
  the V' non-special vocabulary columns with ``h = eta/sqrt(V')`` per element. The gradient ``E_t g_t + E_s g_s``
  is dense over the vocabulary, so a step of norm η spreads over all V' columns and the projection keeps only
  its top; default η = 5 moved ~10 % of each position's mass onto ~14 other tokens (MiniLM teacher →
  text_transformer student, tweets; η = 1 moved ~2 %). After **each** of the K steps
  the distributions are projected back onto the probability simplex by the Euclidean (sort-based) projection
  (Held et al. 1974; Duchi et al. 2008): ``q ← max(q − θ, 0)`` with θ such that each row sums to 1, computed
  over the non-special columns only (special tokens keep probability 0 at real positions). The projection is
  sparse — it moves mass from the original token to the few tokens whose gradient is largest — and, being a
  projection onto a convex set that contains the start, the projected step ``Δ`` of a step ``s = c·g``
  (rules ``l2`` and ``raw``) still satisfies ``⟨g, Δ⟩ ≥ ‖Δ‖²/c ≥ 0`` (an ascent direction to first order).
  The exact projection is computed from the top 64 entries per row and falls back to a full sort for rows
  where the top 64 do not determine θ.

In both spaces **padding and special tokens are untouched** (masked in :func:`ascend`): positions whose id is
in ``special_ids`` (default: the union of the student's and the teacher's ``special_ids`` — [PAD], [UNK],
[CLS], [SEP], [MASK] for BERT vocabularies) keep their start value (pad embedding rows are exactly zero,
special one-hots stay one-hot), and the models' attention masks stay as they were (models read padding from
zero embedding rows / pad one-hots, see ``kdlab.models.hf``). ``trim`` (default true) drops the trailing
columns that are padding in every row of the batch before generating (the V-wide relaxed tensor is
N×L×V floats: batch 32 × 48 tokens × 30,522 = 188 MB), so x' may be shorter than the clean batch; set it false
for objectives that compare per-position features of x'.

Everything else follows the image view: both networks in eval mode during generation (training flags saved
and restored), teacher frozen, only the input differentiated; ``direction: random`` draws a Gaussian direction
(masked the same way) rescaled per sample and step to the norm the gradient step would have had (before the
simplex projection); ``fraction`` of the batch is used; ``weight`` = λ_aux = 0.25; targets are the teacher's
(never the hard label). Online only (every batch). Cost per call: K forward+backward passes through teacher and
student on x', 1 teacher forward for the targets (returned in ``ViewBatch.teacher``), 1 student forward without
grad for ``d_after`` (``stats_pass: false`` drops it). In the relaxed space the models' ``q @ E`` uses only the
non-zero entries of ``q`` (``kdlab.models.hf.relaxed_embed``), but the input gradient ``g @ Eᵀ`` is a dense
(N·L)×d×V product per model and step, and :func:`ascend` works on N×L×V tensors: measured on one busy CPU
thread, MiniLM teacher + text_transformer student, batch 32 × 48 tokens: a KD step (teacher forward included)
0.64 s; the view on the whole batch plus the student pass on x' +7.0 s, on ``fraction: 0.25`` +1.3 s.

The clean batch is int64 token ids and x' is float (N×L×d or N×L×V): keep ``train.concat_views: false`` (the
default) — the two cannot be concatenated into one student pass.

Stats (per epoch): ``d_before``, ``d_after`` (mean D at the start / at x'), ``l2`` (mean per-sample L2 distance
of x' to its start, in the space of the perturbation), ``moved`` (relaxed: mean probability mass moved off the
original token per perturbed position; embedding: mean per-position step norm relative to the embedding norm),
``tokens`` (fraction of positions that were perturbed, i.e. neither padding nor special).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.errors import KDLabError
from kdlab.registry import VIEWS
from kdlab.views.backward import StepRule, _subset, ascend, divergence
from kdlab.views.extra import ExtraParams, ExtraView, ViewBatch, ViewInput

DEFAULT_ETA = {"embedding": 0.1, "relaxed": 5.0}


# ------------------------------------------------------------------------------------------- the simplex
def project_simplex(v: torch.Tensor, allowed: torch.Tensor | None = None, *, top: int = 64) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` (…×V) onto the probability simplex, restricted to the
    ``allowed`` columns (bool V; the others get 0). Exact: θ from the ``top`` largest entries where they
    determine it, a full sort for the other rows."""
    shape = v.shape
    rows = v.reshape(-1, shape[-1])
    if allowed is not None:
        rows = rows.masked_fill(~allowed.to(rows.device), float("-inf"))
    n_allowed = int(allowed.sum()) if allowed is not None else shape[-1]
    if n_allowed < 1:
        raise ValueError("project_simplex: no allowed column")

    def theta(sorted_desc: torch.Tensor) -> torch.Tensor:
        k = sorted_desc.shape[-1]
        finite = torch.isfinite(sorted_desc)
        u = torch.where(finite, sorted_desc, torch.zeros_like(sorted_desc))
        css = u.cumsum(-1)
        j = torch.arange(1, k + 1, device=u.device, dtype=u.dtype)
        cond = finite & (u - (css - 1) / j > 0)
        rho = (cond * j).amax(-1).clamp_min(1)  # largest j with the condition (the condition holds for j = 1)
        return (css.gather(-1, rho.long().unsqueeze(-1) - 1).squeeze(-1) - 1) / rho

    k = min(top, n_allowed)
    vals = rows.topk(k, dim=-1).values
    th = theta(vals)
    if k < n_allowed:  # the top-k suffice iff the (k+1)-th entry is at or below θ
        nxt = rows.topk(k + 1, dim=-1).values[:, -1]
        bad = nxt > th
        if bool(bad.any()):
            th = th.clone()
            th[bad] = theta(rows[bad].sort(dim=-1, descending=True).values)
    out = (rows - th.unsqueeze(-1)).clamp_min(0)
    out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------------ params
class TextBackwardParams(ExtraParams):
    """Recipe fields of ``backward_text`` (defaults: research note §2.3 where they carry over, else ours)."""

    weight: float = Field(0.25, ge=0, description="λ_aux: weight of the objective on the auxiliary samples")
    targets: Literal["teacher"] = Field("teacher", description="always the teacher: never the original label")
    space: Literal["embedding", "relaxed"] = Field(
        "relaxed", description="ascend in embedding space or on relaxed (soft one-hot) tokens"
    )
    tau: float = Field(4.0, gt=0, description="temperature of the divergence that the ascent increases")
    steps: int = Field(1, ge=1, description="K, ascent steps per sample")
    eta: float | None = Field(
        None, ge=0, description="step budget; None: 0.1 (embedding, fraction of the embedding norm) / 5.0 (relaxed)"
    )
    step_rule: StepRule = Field("l2", description="l2, sign or raw, as the backward view")
    direction: Literal["gradient", "random"] = Field(
        "gradient", description="random: a same-norm random direction (the control)"
    )
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of the batch that gets an auxiliary sample")
    special_ids: list[int] | None = Field(
        None, description="token ids never perturbed; None: the union of both models' special_ids"
    )
    trim: bool = Field(True, description="drop trailing columns that are padding in every row before generating")
    stats_pass: bool = Field(True, description="one no-grad student forward for the d_after statistic")


def _text_model(model: Any, role: str) -> Any:
    for attr in ("vocab_size", "pad_id", "embed_dim", "embed", "embedding_matrix"):
        if not hasattr(model, attr):
            raise KDLabError(
                f"view 'backward_text' needs text models (kdlab.models.hf: hf_classifier, "
                f"text_transformer, text_cnn, bag_of_embeddings); the {role} "
                f"{type(model).__name__} has no {attr!r}"
            )
    return model


def _with_flags(student: torch.nn.Module):
    return [(mod, mod.training) for mod in student.modules()]


def generate(
    teacher: Any,
    student: torch.nn.Module,
    ids: torch.Tensor,
    params: TextBackwardParams,
    gen: torch.Generator | None = None,
    *,
    ascent: bool = True,
    record: bool = False,
) -> dict[str, Any]:
    """Auxiliary inputs from the token ids ``ids`` (N×L). Returns ``x`` (the float input for both models),
    ``x0`` (its start), ``mask`` (perturbed positions, N×L bool), ``d_before`` (per sample), ``steps`` (with
    ``record``: each step before projection), ``s_after`` (student logits at x, no grad) and per-sample stats.
    Both networks run in eval mode; the student's training flags are restored."""
    tmodel = _text_model(teacher.model, "teacher")
    smodel = _text_model(student, "student")
    p = params
    special = (
        set(p.special_ids)
        if p.special_ids is not None
        else (set(getattr(smodel, "special_ids", ())) | set(getattr(tmodel, "special_ids", ())) | {smodel.pad_id})
    )
    ids = ids.long()
    if p.trim:
        real = (ids != smodel.pad_id).any(0).nonzero()
        keep = int(real.max()) + 1 if len(real) else 1
        ids = ids[:, :keep]
    special_t = torch.tensor(sorted(special), dtype=torch.long, device=ids.device)
    active = ~torch.isin(ids, special_t)  # N×L positions that may change
    eta = DEFAULT_ETA[p.space] if p.eta is None else float(p.eta)

    def div(x: torch.Tensor) -> torch.Tensor:
        return divergence(teacher.forward_grad(x).logits, student(x), p.tau)

    flags = _with_flags(student)
    student.eval()
    steps_rec: list[torch.Tensor] = []
    try:
        if p.space == "embedding":
            if smodel.embed_dim != tmodel.embed_dim:
                raise KDLabError(
                    f"backward_text space: embedding feeds the student's input embeddings to the teacher, so both "
                    f"need the same embedding width; student {smodel.embed_dim}, teacher {tmodel.embed_dim} "
                    "(use space: relaxed, which needs only a shared vocabulary)"
                )
            if smodel.vocab_size != tmodel.vocab_size:
                raise KDLabError(
                    "backward_text space: embedding needs teacher and student to share the tokenizer; "
                    f"vocabulary sizes differ ({tmodel.vocab_size} vs {smodel.vocab_size})"
                )
            with torch.no_grad():
                x0 = smodel.embed(ids).detach().float()
            mask = active.unsqueeze(-1).to(x0.dtype)
            if p.step_rule == "l2":
                norms = x0.norm(dim=-1)[active]
                ref = float(norms.mean()) if norms.numel() else 0.0
                h = eta * ref / math.sqrt(x0.shape[-1])
            else:
                h = eta
            asc = SimpleNamespace(
                steps=p.steps, eta=h * p.steps, step_rule=p.step_rule, direction=p.direction, ball=None, eps=None
            )
            res = ascend(x0, div, asc, None, None, gen, mask=mask, ascent=ascent, record=record)
            x, d_before, steps_rec = res.x, res.d_before, res.steps
            step_norm = (x - x0).norm(dim=-1)
            moved = step_norm / x0.norm(dim=-1).clamp_min(1e-12)
        else:
            if smodel.vocab_size != tmodel.vocab_size:
                raise KDLabError(
                    "backward_text space: relaxed feeds one token distribution to both models, so they "
                    f"must share the vocabulary; sizes differ ({tmodel.vocab_size} vs "
                    f"{smodel.vocab_size})"
                )
            V = smodel.vocab_size
            allowed = torch.ones(V, dtype=torch.bool, device=ids.device)
            allowed[special_t[special_t < V]] = False
            n_allowed = int(allowed.sum())
            x0 = F.one_hot(ids, V).float()
            mask = active.unsqueeze(-1) & allowed  # N×L×V
            h = eta / math.sqrt(n_allowed) if p.step_rule == "l2" else eta
            asc = SimpleNamespace(steps=1, eta=h, step_rule=p.step_rule, direction=p.direction, ball=None, eps=None)
            x = x0
            d_before = None
            for _ in range(p.steps):
                res = ascend(x, div, asc, None, None, gen, mask=mask, ascent=ascent, record=record)
                if d_before is None:
                    d_before = res.d_before
                steps_rec += res.steps
                x = res.x
                if bool(active.any()):
                    x = x.clone()
                    x[active] = project_simplex(x[active], allowed)
            del mask
            moved = 1.0 - x.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        s_after = None
        if p.stats_pass:
            with torch.no_grad():
                s_after = student(x).float()
    finally:
        for mod, was in flags:
            mod.training = was
    n_act = active.sum(1).clamp_min(1)
    per = {
        "d_before": d_before,
        "l2": (x - x0).reshape(len(x), -1).norm(dim=1),
        "moved": (moved * active).sum(1) / n_act,
        "tokens": active.float().mean(1),
    }
    return {"x": x, "x0": x0, "ids": ids, "mask": active, "steps": steps_rec, "s_after": s_after, "per": per}


@VIEWS.register(
    "backward_text",
    description="text auxiliary samples: ascent on KL(teacher‖student) in embedding or relaxed-token space "
    "(reconstruction)",
    paper="Jafari, Rezagholizadeh & Ghodsi, arXiv 2301.12006 (backward-pass knowledge; our reconstruction)",
)
class TextBackward(ExtraView):
    """Backward-pass auxiliary samples for token-id inputs; see the module docstring."""

    Params = TextBackwardParams

    def __init__(self, params: TextBackwardParams | Mapping[str, Any] | None = None):
        if isinstance(params, Mapping):
            params = TextBackwardParams.model_validate(dict(params))
        super().__init__(params)

    def __call__(self, inp: ViewInput) -> ViewBatch:
        if inp.teacher is None:
            raise KDLabError("view 'backward_text' needs a teacher (the divergence is teacher vs student)")
        if inp.x.is_floating_point() or inp.x.dim() != 2:
            raise KDLabError(
                "view 'backward_text' works on token ids (an int64 N×L batch from a text dataset such "
                "as tweets or glue); for images use the 'backward' view"
            )
        sub = _subset(len(inp.x), self.p.fraction, inp.gen, inp.x.device)
        ids = inp.x if sub is None else inp.x[sub]
        idx = inp.idx if sub is None else inp.idx[sub.to(inp.idx.device)]
        y = inp.y if sub is None else inp.y[sub.to(inp.y.device)]
        out = generate(inp.teacher, inp.student, ids, self.p, inp.gen)
        x = out["x"]
        t_out = inp.teacher(x)
        per = out["per"]
        if out["s_after"] is not None:
            per["d_after"] = divergence(t_out.logits, out["s_after"], self.p.tau)
        stats = {k: float(v.float().mean()) for k, v in per.items()}
        return ViewBatch(x=x, idx=idx, y=y, teacher=t_out, stats=stats)


__all__ = ["TextBackward", "TextBackwardParams", "generate", "project_simplex"]
