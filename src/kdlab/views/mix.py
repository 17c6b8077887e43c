"""Mixing extra views: mixup, CutMix, Cutout and CutMixPick (Wang et al., "KD thrives on data augmentation").

Each view turns the clean, normalised batch ``x`` (N×C×H×W, or N×C×L signals) into a second batch ``x'``::

    views:
      - {name: cutmix}                                    # TLCutMix: the teacher labels x'
      - {name: cutmix_pick, criterion: teacher_entropy}   # CutMixPick: keep the most informative of 2B candidates

Conventions shared by every view here:

* Randomness comes only from ``inp.gen``. Numbers are drawn on the generator's device (the CPU in the engine)
  and moved to ``x.device``. Beta variates are drawn by numpy from a seed taken from ``inp.gen`` (torch's Beta
  sampler takes no generator), so a seeded generator still fixes everything.
* CutMix partners are a random *derangement* ``π`` (no sample is mixed with itself; the authors' CutMix draws
  one by rejection, as we do). mixup's partner is a plain random permutation by default, as the authors' mixup
  (``partner: permutation``: about one sample in B stays unmixed), or a derangement (``partner: derangement``).
  A batch of one has no partner: mixup/CutMix then return ``x`` unchanged with λ = 1.
* ``y_mix = (y, y[π], λ)`` with λ per sample, the weight of ``y``; for CutMix it is the area-corrected
  ``1 − box_area/(H·W)`` (``1 − seg_len/L`` for signals).
* ``lam: batch`` draws one λ (and, for CutMix, one box) for the whole batch, as the papers do; ``lam: sample``
  draws them per sample (a variant, not what was run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdlab.registry import VIEWS
from kdlab.teachers.base import TeacherOutput
from kdlab.views.basic import generator_device
from kdlab.views.extra import ExtraParams, ExtraView, ViewBatch, ViewInput

_WANG = "Wang et al., Knowledge Distillation Thrives on Data Augmentation, arXiv 2012.02909 / NeurIPS 2022"

__all__ = [
    "CutMix",
    "CutMixPick",
    "Cutout",
    "Mixup",
    "MixupParams",
    "beta",
    "box_mask",
    "cut_sides",
    "cutmix_batch",
    "derangement",
    "entropy",
    "rand_box",
]


# --------------------------------------------------------------------------------------------------- helpers
def derangement(n: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random derangement of ``range(n)`` (a permutation with no fixed point), int64 on ``gen``'s
    device, drawn by rejection (``randperm`` until no ``π[i] == i``; e ≈ 2.72 draws expected).

    ``n <= 1`` has no derangement: the identity (``[0]`` or empty) is returned and callers treat it as
    "no partner" (mixup/CutMix return the batch unchanged).
    """
    dev = generator_device(gen)
    if n <= 1:
        return torch.arange(n, device=dev)
    ar = torch.arange(n, device=dev)
    for _ in range(10_000):  # P(no success) = (1 - ~1/e)^10000: unreachable
        perm = torch.randperm(n, generator=gen, device=dev)
        if not bool((perm == ar).any()):
            return perm
    return torch.roll(ar, 1)  # pragma: no cover - a valid (cyclic) derangement as the last resort


def beta(alpha: float, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) (float64, CPU). ``alpha == 1`` is the uniform law, drawn directly."""
    if alpha == 1.0:
        return torch.rand(n, generator=gen, device=generator_device(gen), dtype=torch.float64).cpu()
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=generator_device(gen)).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n))


def cut_sides(spatial: Sequence[int], lam: torch.Tensor) -> torch.Tensor:
    """CutMix box sides for mixing weights ``lam`` (N): ``int(S·(1−λ)^(1/d))`` per spatial dim, i.e.
    ``int(W·sqrt(1−λ))`` for images and ``int(L·(1−λ))`` for signals (N×d int64)."""
    d = len(spatial)
    rest = (1.0 - lam.double()).clamp(0.0, 1.0)
    frac = rest if d == 1 else rest.sqrt() if d == 2 else rest ** (1.0 / d)
    sizes = torch.tensor(list(spatial), dtype=torch.float64, device=lam.device)
    return torch.floor(frac[:, None] * sizes[None, :]).long()


def rand_box(spatial: Sequence[int], sides: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Boxes (N×d×2 int64, ``[lo, hi)`` per spatial dim) with the given ``sides`` (N×d) and a centre drawn
    uniformly over the pixel positions, clipped to the image (so a box near the border is smaller).

    The box spans ``[c − side//2, c − side//2 + side)`` before clipping: exactly ``side`` long. (The reference
    CutMix code uses ``[c − side//2, c + side//2)``, one pixel shorter for odd sides; the area-corrected λ makes
    this immaterial.)
    """
    n, d = sides.shape
    dev = generator_device(gen)
    sizes = torch.tensor(list(spatial), dtype=torch.long)
    u = torch.rand(n, d, generator=gen, device=dev, dtype=torch.float64).cpu()
    centre = torch.minimum((u * sizes).long(), sizes - 1)
    sides = sides.cpu()
    lo = (centre - sides // 2).clamp(min=0)
    hi = (centre - sides // 2 + sides).clamp(max=sizes)
    return torch.stack([lo, hi], dim=-1)


def box_mask(spatial: Sequence[int], boxes: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Boolean mask N×1×(spatial): True inside each sample's box."""
    boxes = boxes.to(device)
    n, d = boxes.shape[:2]
    mask = torch.ones(n, *([1] * d), dtype=torch.bool, device=device)
    for i, size in enumerate(spatial):
        pos = torch.arange(size, device=device)
        inside = (pos[None, :] >= boxes[:, i, 0:1]) & (pos[None, :] < boxes[:, i, 1:2])  # N×S_i
        shape = [n] + [1] * d
        shape[1 + i] = size
        mask = mask & inside.reshape(shape)
    return mask.unsqueeze(1)


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() not in (3, 4):
        raise ValueError(f"mixing views expect a batch N×C×H×W or N×C×L, got shape {tuple(x.shape)}")
    return tuple(x.shape[2:])


def _per_sample(values: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    return values.expand(n, *values.shape[1:]) if mode == "batch" else values


def cutmix_batch(
    x: torch.Tensor, alpha: float, lam_mode: str, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One CutMix draw on a batch: ``(x', π, area-corrected λ (N, float32), boxes N×d×2)``.

    Draw order (fixed, so a generator replays it): λ (1 or N), box centres (1 or N), derangement.
    """
    spatial = _spatial(x)
    n = len(x)
    if n <= 1:
        return (
            x,
            torch.arange(n, device=x.device),
            torch.ones(n, device=x.device),
            torch.zeros(n, len(spatial), 2, dtype=torch.long),
        )
    draws = 1 if lam_mode == "batch" else n
    lam = beta(alpha, draws, gen)
    boxes = _per_sample(rand_box(spatial, cut_sides(spatial, lam), gen), n, lam_mode)
    perm = derangement(n, gen).to(x.device)
    mask = box_mask(spatial, boxes, x.device)
    out = torch.where(mask, x[perm], x)
    area = (boxes[:, :, 1] - boxes[:, :, 0]).prod(dim=1).double()
    lam_area = (1.0 - area / math.prod(spatial)).float().to(x.device)
    return out, perm, lam_area, boxes


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row Shannon entropy (nats) of ``softmax(logits)``, from ``log_softmax`` (no NaN where p underflows)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def kl_rows(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row ``KL(p_t^τ ‖ p_s^τ)`` (no τ² factor: it does not change a ranking)."""
    lt = F.log_softmax(t_logits.float() / tau, dim=-1)
    ls = F.log_softmax(s_logits.float() / tau, dim=-1)
    return (lt.exp() * (lt - ls)).sum(dim=-1)


# ------------------------------------------------------------------------------------------------------ views
class MixParams(ExtraParams):
    alpha: float = Field(1.0, gt=0, description="Beta(alpha, alpha) of the mixing ratio λ (1: uniform)")
    lam: Literal["batch", "sample"] = Field("batch", description="one λ per batch (the papers) or one per sample")


class MixupParams(MixParams):
    # permutation: torch.randperm as the authors' mixup (and Zhang et al.'s code) - a sample can be its own
    # partner (~1 in B stays clean); derangement: never (our earlier default, kept as an option)
    partner: Literal["permutation", "derangement"] = Field(
        "permutation",
        description=(
            "permutation: a random permutation (a sample may be its own partner, the authors'); derangement: never"
        ),
    )


@VIEWS.register(
    "mixup",
    description="mixup x' = λx + (1−λ)x[π], π a random permutation (TLmixup) or derangement",
    paper="Zhang et al., mixup, ICLR 2018; " + _WANG,
)
class Mixup(ExtraView):
    """mixup: ``x' = λ·x + (1−λ)·x[π]``, λ ~ Beta(alpha, alpha) once per batch (or per sample), π a random
    permutation (``partner: permutation``, the authors') or derangement. ``y_mix = (y, y[π], λ)``. A batch of
    one is returned unchanged (λ = 1)."""

    Params = MixupParams

    def __call__(self, inp: ViewInput) -> ViewBatch:
        x = inp.x
        n = len(x)
        if n <= 1:
            lam = torch.ones(n, device=x.device)
            return ViewBatch(x=x, idx=inp.idx, y=inp.y, y_mix=(inp.y, inp.y, lam), stats={"lam": 1.0})
        draws = 1 if self.p.lam == "batch" else n
        lam = _per_sample(beta(self.p.alpha, draws, inp.gen), n, self.p.lam).float().to(x.device)
        if self.p.partner == "derangement":
            perm = derangement(n, inp.gen).to(x.device)
        else:
            perm = torch.randperm(n, generator=inp.gen, device=generator_device(inp.gen)).to(x.device)
        w = lam.to(x.dtype).reshape(n, *([1] * (x.dim() - 1)))
        out = w * x + (1 - w) * x[perm]
        return ViewBatch(
            x=out,
            idx=inp.idx,
            y=inp.y,
            y_mix=(inp.y, inp.y[perm.to(inp.y.device)], lam),
            stats={"lam": float(lam.mean())},
        )


@VIEWS.register(
    "cutmix",
    description="CutMix: paste a box of a derangement partner, area-corrected λ (TLCutMix)",
    paper="Yun et al., CutMix, ICCV 2019; " + _WANG,
)
class CutMix(ExtraView):
    """CutMix: λ ~ Beta(alpha, alpha); a box of sides ``int(S·sqrt(1−λ))`` (a segment of ``int(L·(1−λ))`` for
    signals) at a uniform centre, clipped; one box for the whole batch (``lam: batch``, the papers) or one per
    sample; the box region is replaced by that of the derangement partner ``x[π]``. ``y_mix = (y, y[π], λ_area)``
    with ``λ_area = 1 − box_area/(H·W)``. A batch of one is returned unchanged."""

    Params = MixParams

    def __call__(self, inp: ViewInput) -> ViewBatch:
        out, perm, lam, _ = cutmix_batch(inp.x, self.p.alpha, self.p.lam, inp.gen)
        y_b = inp.y[perm.to(inp.y.device)]
        return ViewBatch(x=out, idx=inp.idx, y=inp.y, y_mix=(inp.y, y_b, lam), stats={"lam": float(lam.mean())})


class CutoutParams(ExtraParams):
    # side of the square (segment) in pixels, or as a share of each spatial side; neither → ratio 0.25
    # (DeVries & Taylor: 16 px on CIFAR-10 = 0.5, 8 px on CIFAR-100 = 0.25, 20 px on SVHN)
    size: int | None = Field(None, ge=1, description="side of the square hole in pixels")
    ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description=("side of the hole as a share of each spatial side (neither size nor ratio: 0.25)"),
    )
    # batch: one hole (one centre) for the whole batch, as the authors' KD+Cutout and T. stddev rows (Wang et al.)
    # were produced; sample: one hole per sample, as DeVries & Taylor's Cutout (a per-image transform)
    per: Literal["batch", "sample"] = Field(
        "batch",
        description=(
            "batch: one hole for the whole batch (Wang et al.'s rows); sample: one per sample (DeVries & Taylor)"
        ),
    )

    @model_validator(mode="after")
    def _one_of(self) -> CutoutParams:
        if self.size is not None and self.ratio is not None:
            raise ValueError("give cutout either size or ratio, not both")
        return self


@VIEWS.register(
    "cutout",
    description="Cutout: zero a random square, one per batch (Wang et al.'s rows) or per sample",
    paper="DeVries & Taylor, Improved Regularization of CNNs with Cutout, arXiv 1708.04552, 2017; " + _WANG,
)
class Cutout(ExtraView):
    """Cutout: a square of side ``size`` (or ``ratio``·side; a segment for signals) at a uniform centre, clipped
    at the border, is set to 0 — one square for the whole batch (``per: batch``, default: what reproduces the
    KD+Cutout and T. stddev rows of Wang et al.) or one per sample (``per: sample``, DeVries & Taylor's per-image
    Cutout). The batch is normalised, so 0 is the dataset's mean pixel — as in the reference code, which applies
    Cutout after normalisation. Labels are unchanged (``y_mix`` None)."""

    Params = CutoutParams

    def __call__(self, inp: ViewInput) -> ViewBatch:
        x = inp.x
        spatial = _spatial(x)
        n = len(x)
        if self.p.size is not None:
            side = [min(self.p.size, s) for s in spatial]
        else:
            ratio = self.p.ratio if self.p.ratio is not None else 0.25
            side = [max(1, int(round(ratio * s))) for s in spatial]
        draws = 1 if self.p.per == "batch" else n
        sides = torch.tensor(side, dtype=torch.long).expand(draws, len(spatial))
        boxes = _per_sample(rand_box(spatial, sides, inp.gen), n, self.p.per)
        mask = box_mask(spatial, boxes, x.device)
        out = x.masked_fill(mask, 0.0)
        share = (boxes[:, :, 1] - boxes[:, :, 0]).prod(dim=1).double() / math.prod(spatial)
        return ViewBatch(x=out, idx=inp.idx, y=inp.y, stats={"cut_share": float(share.mean()) if n else 0.0})


class PickParams(MixParams):
    m: int = Field(2, ge=1, description="pool size: m independent CutMix draws of the batch")
    # candidates kept; None → the batch size (authors: n_pick = 64 = B)
    k: int | None = Field(None, ge=1, description="candidates kept from the pool; null: the batch size")
    # NeurIPS22 CutMixPick: teacher entropy; ICLR22 "pick": KL(T‖S) at τ=4; random: same pool, random keep
    criterion: Literal["teacher_entropy", "student_entropy", "kl", "random"] = Field(
        "teacher_entropy",
        description=("how candidates are scored: teacher_entropy, student_entropy, kl (T‖S at tau_kl) or random"),
    )
    tau_kl: float = Field(4.0, gt=0, description="temperature of the kl criterion")
    # eval: score the student with frozen BN statistics; train: as the authors' code (updates BN running stats)
    student_mode: Literal["eval", "train"] = Field(
        "eval", description=("eval: score the student with frozen BN statistics; train: as the authors' code")
    )


@VIEWS.register(
    "cutmix_pick",
    description="CutMixPick: m·B CutMix candidates, keep the top-k by teacher entropy / KL / student "
    "entropy (random = control)",
    paper=_WANG,
)
class CutMixPick(ExtraView):
    """CutMixPick. Builds a pool of ``m·B`` candidates from ``m`` independent CutMix draws of the batch (each
    with its own λ, box and derangement; the draws are exactly ``m`` calls of the ``cutmix`` view on the same
    generator), scores every *augmented* candidate without gradient and keeps the ``k`` highest scores (rows in
    pool order):

    * ``teacher_entropy`` — entropy of ``softmax(f_t(u))`` at τ = 1, natural log ([NeurIPS22], default);
    * ``student_entropy`` — the same with the student;
    * ``kl`` — ``KL(p_t^τ ‖ p_s^τ)`` at ``tau_kl`` = 4 ([ICLR22] Eq. 3);
    * ``random`` — uniform scores from the generator over the same pool (the control).

    When the teacher scored the pool, its output restricted to the kept rows (logits and features) is returned
    in ``ViewBatch.teacher``, so the engine does not run it again: (m+1)·B teacher samples per step in all. For
    ``student_entropy`` and ``random`` the teacher is not run here (the engine runs it on the k kept rows).
    The student is scored in eval mode by default (each module's training flag is saved and restored);
    ``student_mode: train`` scores it in train mode under no_grad, which updates BatchNorm running statistics
    as the authors' code does. ``stats``: mean score of the kept rows and of the pool and their ratio
    (the paper's informativeness ratio r; for ``random`` it is the ratio of the uniform scores themselves,
    ≈ 1.5 when half the pool is kept, not a measure of informativeness), and the mean area-λ of the kept rows.
    Kept rows come in pool order.
    """

    Params = PickParams

    @property
    def uses_student(self) -> bool:
        """The student scores the pool (``student_entropy``, ``kl``): ``kdlab diagnose`` then needs its weights."""
        return self.p.criterion in ("student_entropy", "kl")

    def pool(self, inp: ViewInput) -> ViewBatch:
        """The m·B candidates (idx, y, y_mix per candidate), in draw order."""
        cut = CutMix(MixParams(alpha=self.p.alpha, lam=self.p.lam))
        parts = [cut(inp) for _ in range(self.p.m)]
        cat = torch.cat
        y_mix = tuple(cat([pb.y_mix[i] for pb in parts]) for i in range(3))  # type: ignore[index]
        return ViewBatch(
            x=cat([pb.x for pb in parts]), idx=cat([pb.idx for pb in parts]), y=cat([pb.y for pb in parts]), y_mix=y_mix
        )  # type: ignore[arg-type]

    def _student_logits(self, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
        flags = [(mod, mod.training) for mod in student.modules()]
        try:
            student.train(self.p.student_mode == "train")
            with torch.no_grad():
                out = student(x)
        finally:
            for mod, flag in flags:
                mod.training = flag
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    def __call__(self, inp: ViewInput) -> ViewBatch:
        pool = self.pool(inp)
        size = len(pool.x)
        k = min(self.p.k if self.p.k is not None else len(inp.x), size)
        crit = self.p.criterion
        t_out = None
        if crit in ("teacher_entropy", "kl"):
            if inp.teacher is None:
                raise ValueError(f"cutmix_pick criterion {crit!r} needs a teacher")
            t_out = inp.teacher(pool.x)
        if crit == "teacher_entropy":
            assert t_out is not None
            scores = entropy(t_out.logits)
        elif crit == "student_entropy":
            scores = entropy(self._student_logits(inp.student, pool.x))
        elif crit == "kl":
            assert t_out is not None
            scores = kl_rows(t_out.logits, self._student_logits(inp.student, pool.x), self.p.tau_kl)
        else:  # drawn after the pool, so a seeded generator gives the same pool for every criterion
            scores = torch.rand(size, generator=inp.gen, device=generator_device(inp.gen), dtype=torch.float64).float()
        scores = scores.detach().float().cpu()
        keep = torch.topk(scores, k, sorted=False).indices.sort().values
        kd = keep.to(pool.x.device)
        teacher = None
        if t_out is not None:
            feats = {
                name: (v[kd.to(v.device)] if v.dim() and v.shape[0] == size else v) for name, v in t_out.feats.items()
            }
            teacher = TeacherOutput(t_out.logits[kd.to(t_out.logits.device)], feats)
        y_mix = tuple(t[kd.to(t.device)] for t in pool.y_mix)  # type: ignore[union-attr]
        kept_mean = float(scores[keep].mean()) if k else 0.0
        pool_mean = float(scores.mean()) if size else 0.0
        stats = {
            "score_kept": kept_mean,
            "score_pool": pool_mean,
            "pick_ratio": kept_mean / pool_mean if pool_mean > 0 else 1.0,
            "lam": float(pool.y_mix[2][kd].mean()) if k else 1.0,
        }  # type: ignore[index]
        return ViewBatch(
            x=pool.x[kd],
            idx=pool.idx[kd.to(pool.idx.device)],
            y=pool.y[kd.to(pool.y.device)],
            y_mix=y_mix,
            teacher=teacher,
            stats=stats,
        )  # type: ignore[arg-type]
