"""Logit-matching terms: cross-entropy on labels, Hinton KD and its logit-level successors.

All terms compute in float32 from ``log_softmax`` (never ``log(softmax)``), so bf16/fp16 logits, 2 classes
and a batch of 1 stay finite. ``standardize=True`` on ``kd``, ``dkd``, ``dist`` and ``mlkd`` z-scores each
sample's logits (student and teacher separately) before the temperature (Sun et al., CVPR 2024);
``ls_kd`` is ``kd`` with that switch on and the paper's CIFAR-100 base temperature and weight.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from kdlab.errors import KDLabError
from kdlab.methods.base import SetupInfo, StepContext, Term, TermParams
from kdlab.registry import TERMS


def kl_div_tau(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(p_t^tau || p_s^tau), summed over classes and averaged over the batch (batchmean).

    Computed in float32 from log-softmax on both sides, so identical logits give exactly 0 and
    bf16/fp16 inputs stay finite.
    """
    log_ps = F.log_softmax(s_logits.float() / tau, dim=-1)
    log_pt = F.log_softmax(t_logits.float() / tau, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return kl.mean() * tau * tau


def standardize_logits(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each row over the classes: (z - mean) / (std + eps), in float32.

    Sun et al., CVPR 2024 ("Logit Standardization in KD"); like the authors' code the standard deviation
    is the unbiased one (n - 1) and eps = 1e-7. The variance is clamped at 1e-12 before the square root so
    that a constant row (std 0) maps to zeros with a finite gradient instead of NaN.
    """
    z = z.float()
    centred = z - z.mean(dim=-1, keepdim=True)
    var = centred.pow(2).sum(-1, keepdim=True) / max(1, z.shape[-1] - 1)
    return centred / (var.clamp_min(1e-12).sqrt() + eps)


def _prepared(s: torch.Tensor, t: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits for the loss, z-scored per sample when ``standardize`` is on."""
    if standardize:
        return standardize_logits(s), standardize_logits(t)
    return s.float(), t.float()


def _check_pair(s: torch.Tensor, t: torch.Tensor, name: str) -> None:
    if s.shape != t.shape:
        raise KDLabError(
            f"{name}: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ; "
            "logit terms need the same classes in student and teacher"
        )


# ---------------------------------------------------------------------------------------------- CE


class CEParams(TermParams):
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing epsilon of the cross-entropy")


@TERMS.register("ce", description="cross-entropy with the (possibly noisy) labels", paper="-")
class CrossEntropy(Term):
    Params = CEParams
    needs_teacher = False
    label_term = True

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logits, ls = ctx.s_logits.float(), self.p.label_smoothing
        if ctx.y_mix is not None:  # classic mixup/CutMix rule: lam CE(y_a) + (1 - lam) CE(y_b), lam per sample
            y_a, y_b, lam = ctx.y_mix
            ce_a = F.cross_entropy(logits, y_a, reduction="none", label_smoothing=ls)
            ce_b = F.cross_entropy(logits, y_b, reduction="none", label_smoothing=ls)
            return {"loss": (lam * ce_a + (1 - lam) * ce_b).mean()}
        if not ctx.y_is_target:
            return {}
        return {"loss": F.cross_entropy(logits, ctx.y, label_smoothing=ls)}


# ---------------------------------------------------------------------------------------------- KD


class KDParams(TermParams):
    # Hinton et al. 2015; tau=4 and weights 0.9 KD / 0.1 CE as in RepDistiller and the seed papers.
    weight: float = Field(0.9, description="multiplier of this term's loss in the objective")
    tau: float = Field(4.0, gt=0, description="temperature of both softmaxes (the loss is scaled by tau^2)")
    # Sun et al., CVPR 2024: z-score logits before the temperature (off = Hinton's original).
    standardize: bool = Field(False, description="z-score the logits before the temperature (Sun et al. 2024)")


@TERMS.register("kd", description="Hinton KD: tau^2 KL(p_t^tau || p_s^tau)", paper="Hinton et al., 2015")
class HintonKD(Term):
    Params = KDParams

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        _check_pair(ctx.s_logits, ctx.t_logits, "kd")
        s, t = _prepared(ctx.s_logits, ctx.t_logits, self.p.standardize)
        return {"loss": kl_div_tau(s, t, self.p.tau)}


class LSKDParams(KDParams):
    # Sun et al., CVPR 2024, README of sunshangquan/logit-standardization-KD for CIFAR-100:
    # `--logit-stand --base-temp 2 --kd-weight 9` (CE weight stays 0.1 from mdistiller's KD config).
    weight: float = Field(9.0, description="multiplier of this term's loss in the objective")
    # "base temperature" 2 (3 for a few pairs in the authors' logs)
    tau: float = Field(2.0, gt=0, description="base temperature of the standardised logits")
    standardize: bool = Field(True, description="z-score the logits before the temperature (the method itself)")


@TERMS.register(
    "ls_kd",
    description="KD on z-scored logits (logit standardization), base tau 2, weight 9",
    paper="Sun et al., CVPR 2024",
)
class LogitStandardizedKD(HintonKD):
    """``kd`` with ``standardize: true`` and the paper's CIFAR defaults; the same as
    ``kd: {standardize: true, tau: 2, weight: 9}``."""

    Params = LSKDParams


# ---------------------------------------------------------------------------------------------- DKD


def _log_binary(z_target: torch.Tensor, z_rest: torch.Tensor) -> torch.Tensor:
    """(B, 2) log(p, 1 - p) of the target class, p = softmax(z)[target], accurate at both ends.

    Small p: log(1 - p) = log1p(-p) (the difference ``logsumexp(rest) - logsumexp(all)`` of two nearly equal
    numbers loses ~1e-4 relative precision in fp32 there). p near 1: that difference is exact (it is
    log(sum of tiny non-target shares)) while 1 - p would round away; the two are switched at p = 1/2."""
    lse_rest = torch.logsumexp(z_rest, -1)
    lse_all = torch.logaddexp(z_target, lse_rest)
    log_p = z_target - lse_all
    small = log_p < -math.log(2.0)
    # clamp the unused branch's input too, so its gradient (masked by where) is never 0 * inf = NaN
    log_q = torch.where(small, torch.log1p(-log_p.clamp(max=-math.log(2.0)).exp()), lse_rest - lse_all)
    return torch.stack([log_p, log_q], -1)


def dkd_parts(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of decoupled KD, each tau^2 * batchmean KL, computed entirely in log space.

    TCKD: KL between the binary distributions (p_target, 1 - p_target), from log-probabilities only
    (``_log_binary``: log1p(-p) for small p, logsumexp(non-target) - logsumexp(all) for p near 1), so it never
    takes the log of a rounded-to-zero probability (mdistiller takes ``torch.log`` of the masked softmax and
    returns inf/NaN there) and keeps fp32 precision when p_target is small.
    NCKD: KL between the softmaxes over the C-1 non-target logits (gathered, not masked). With 2 classes
    that distribution has a single class, so NCKD is exactly 0.
    """
    b, c = s.shape
    if c < 2:
        raise KDLabError("dkd needs at least 2 classes")
    zs, zt = s.float() / tau, t.float() / tau
    gt = F.one_hot(y, c).bool()
    # non-target logits, row order preserved: (B, C-1)
    zs_nt = zs[~gt].view(b, c - 1)
    zt_nt = zt[~gt].view(b, c - 1)
    log_b_s = _log_binary(zs[gt], zs_nt)  # log(p_t, 1 - p_t)
    log_b_t = _log_binary(zt[gt], zt_nt)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(-1).mean()
    log_q_s = F.log_softmax(zs_nt, -1)
    log_q_t = F.log_softmax(zt_nt, -1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(-1).mean()
    return tckd * tau * tau, nckd * tau * tau


class DKDParams(TermParams):
    # Zhao et al., CVPR 2022; CIFAR-100 defaults of mdistiller (configs/cifar100/dkd, engine/cfg.py):
    # DKD.ALPHA 1.0, DKD.BETA 8.0, DKD.T 4.0, DKD.WARMUP 20, CE_WEIGHT 1.0 (the recipe's `ce` term).
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    alpha: float = Field(1.0, ge=0, description="TCKD (target-class) coefficient")
    # NCKD coefficient (mdistiller CIFAR; ImageNet uses 0.5)
    beta: float = Field(8.0, ge=0, description="NCKD (non-target-class) coefficient")
    tau: float = Field(4.0, gt=0, description="temperature")
    warmup: int = Field(20, ge=0, description="epochs of linear warm-up: factor min(epoch / warmup, 1)")
    standardize: bool = Field(False, description="z-score the logits first (Sun et al. 2024)")  # Sun et al., CVPR 2024


@TERMS.register(
    "dkd", description="decoupled KD: alpha*TCKD + beta*NCKD with a linear warm-up", paper="Zhao et al., CVPR 2022"
)
class DecoupledKD(Term):
    Params = DKDParams

    def warm(self, ctx: StepContext) -> float:
        """mdistiller multiplies the DKD loss by min(epoch / warmup, 1) with epochs counted from 1."""
        if self.p.warmup <= 0:
            return 1.0
        return min((ctx.epoch + 1) / self.p.warmup, 1.0)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        _check_pair(ctx.s_logits, ctx.t_logits, "dkd")
        s, t = _prepared(ctx.s_logits, ctx.t_logits, self.p.standardize)
        tckd, nckd = dkd_parts(s, t, ctx.y, self.p.tau)
        w = self.warm(ctx)
        return {"tckd": w * self.p.alpha * tckd, "nckd": w * self.p.beta * nckd}


# ---------------------------------------------------------------------------------------------- DIST


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of matching rows: cosine of the centred rows, eps added to the norm product as
    in the DIST code; norms from clamped squared sums so constant rows have finite gradients."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    na = a.pow(2).sum(-1).clamp_min(1e-24).sqrt()
    nb = b.pow(2).sum(-1).clamp_min(1e-24).sqrt()
    return (a * b).sum(-1) / (na * nb + eps)


class DISTParams(TermParams):
    # Huang et al., NeurIPS 2022. CIFAR-100 setting of the authors' code (hunto/DIST_KD, CIFAR strategy config,
    # as compared on identical tensors in issue 15): tau = 4 and loss weight 2 next to CE weight 1; beta = gamma
    # = 1. (tau = 1 and weight 1 are the ImageNet setting of the paper.)
    weight: float = Field(2.0, description="multiplier of this term's loss in the objective")
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation (per sample, over classes)")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation (per class, over the batch)")
    tau: float = Field(4.0, gt=0, description="temperature of both predictions")
    standardize: bool = Field(False, description="z-score the logits first (Sun et al. 2024)")  # Sun et al., CVPR 2024


@TERMS.register(
    "dist",
    description="DIST: Pearson-correlation inter-class + intra-class relations of predictions",
    paper="Huang et al., NeurIPS 2022",
)
class DIST(Term):
    """tau^2 * (beta * (1 - mean_i rho(p_s[i], p_t[i])) + gamma * (1 - mean_c rho(p_s[:, c], p_t[:, c]))).

    The intra-class relation correlates a class's probabilities across the batch, so it is undefined for a
    batch of 1: it is then a finite 0 (no gradient) and only the inter-class term remains.
    """

    Params = DISTParams

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        _check_pair(ctx.s_logits, ctx.t_logits, "dist")
        s, t = _prepared(ctx.s_logits, ctx.t_logits, self.p.standardize)
        tau = self.p.tau
        ps, pt = F.softmax(s / tau, -1), F.softmax(t / tau, -1)
        inter = 1.0 - _pearson_rows(ps, pt).mean()
        if ps.shape[0] > 1:
            intra = 1.0 - _pearson_rows(ps.t(), pt.t()).mean()
        else:
            intra = ps.sum() * 0.0
        return {"inter": tau * tau * self.p.beta * inter, "intra": tau * tau * self.p.gamma * intra}


# ---------------------------------------------------------------------------------------------- MLKD


# Fewer classes than this with several temperatures: refused (2 and 3 classes diverged on digits subsets with the
# defaults, 5 and 10 did not; see MultiLevelKD.setup and docs/decisions.md).
MLKD_MIN_CLASSES = 5


class MLKDParams(TermParams):
    # Jin et al., CVPR 2023 (Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py):
    # every level at T in {4, 3, 5, 2, 6}, each scaled by mdistiller's KD.LOSS.KD_WEIGHT = 0.9 (CE 0.1).
    weight: float = Field(0.9, description="multiplier of this term's loss in the objective")
    temperatures: list[float] = Field(
        default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0],
        description=("temperatures at which every level is computed and summed"),
    )
    # multipliers of the three levels (1 in the paper; set one to 0 for an ablation)
    w_instance: float = Field(1.0, ge=0, description="multiplier of the instance level (tau^2 KL per sample)")
    w_batch: float = Field(
        1.0, ge=0, description=("multiplier of the batch level (B x B Gram matrix of the predictions)")
    )
    w_class: float = Field(
        1.0, ge=0, description=("multiplier of the class level (C x C Gram matrix of the predictions)")
    )
    # Sun et al., CVPR 2024; as in their MLKD code it z-scores the logits of the instance level only.
    standardize: bool = Field(False, description="z-score the logits of the instance level (Sun et al. 2024)")
    # Against the instance level (a batch mean), the per-sample gradient of the batch level grows as B / C (a
    # sample shares a class with ~B / C others) and that of the class level as (B / C)^2 (M counts samples per
    # class pair): the authors tuned all three at CIFAR-100's B = 64, C = 100; on 10 or 2 classes the same formulas
    # are 6-30x and 40-1000x stronger and send a small student to chance (issue 15). "cifar100" (ours) multiplies
    # the batch level by r = (64 / B)(C / 100) and the class level by r^2 - exactly 1 in the authors' setting -
    # so the three keep their tuned proportions; "none" is the authors' formula at any B and C.
    level_scale: Literal["cifar100", "none"] = Field(
        "cifar100",
        description=(
            "cifar100: rescale batch/class levels to the authors' B = 64, C = 100 proportions; "
            "none: the authors' formula at any B and C"
        ),
    )
    # Linear warm-up of the whole term over the first `warmup` epochs (fractional: (epoch + (step + 1) / steps) /
    # warmup), as DKD's authors do (mdistiller DKD.WARMUP = 20); ours, not in the MLKD code (0 = off, theirs):
    # without it the first epochs at full strength sent digits students to chance (issue 15).
    warmup: float = Field(20.0, ge=0, description="epochs of linear warm-up of the whole term (0: off)")

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("temperatures must be a non-empty list of positive numbers")
        return v


@TERMS.register(
    "mlkd",
    description="multi-level logit KD: instance, batch and class alignment at 5 temperatures",
    paper="Jin et al., CVPR 2023",
)
class MultiLevelKD(Term):
    """Sum over temperatures T of: instance T^2 KL(p_t || p_s) (batchmean); batch ||G_t - G_s||_F^2 / B with
    G = P P^T (B x B); class ||M_t - M_s||_F^2 / C with M = P^T P (C x C), P the softened predictions.

    Left out from the paper (they need the data pipeline, not the loss): the weak/strong two-view
    augmentation (run the term on whatever view the recipe gives) and the teacher-confidence masks. In the
    released code the masks multiply an already batch-averaged scalar by a boolean vector and take the mean,
    so they only scale the weak-view terms by the fraction of samples/classes under the median (about 1/2).
    The released code sums the instance level over both views and the batch/class levels over the weak view
    only; on the one view given here each level counts once.

    Ours, for stability (see ``MLKDParams``): batch/class levels rescaled to the authors' CIFAR-100 proportions
    (``level_scale``), a linear warm-up (``warmup``), and a one-line refusal below ``MLKD_MIN_CLASSES`` classes.
    """

    Params = MLKDParams

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        _check_pair(ctx.s_logits, ctx.t_logits, "mlkd")
        s, t = ctx.s_logits.float(), ctx.t_logits.float()
        b, c = s.shape
        s_inst, t_inst = _prepared(s, t, self.p.standardize)
        inst = s.new_zeros(())
        bat = s.new_zeros(())
        cls = s.new_zeros(())
        for tau in self.p.temperatures:
            inst = inst + kl_div_tau(s_inst, t_inst, tau)
            ps, pt = F.softmax(s / tau, -1), F.softmax(t / tau, -1)
            bat = bat + (pt @ pt.t() - ps @ ps.t()).pow(2).sum() / b
            cls = cls + (pt.t() @ pt - ps.t() @ ps).pow(2).sum() / c
        if self.p.level_scale == "cifar100":
            r = (64.0 / b) * (c / 100.0)
            bat, cls = bat * r, cls * r * r
        w = self.warm(ctx)
        return {
            "instance": w * self.p.w_instance * inst,
            "batch": w * self.p.w_batch * bat,
            "class": w * self.p.w_class * cls,
        }

    def warm(self, ctx: StepContext) -> float:
        if self.p.warmup <= 0:
            return 1.0
        return min(1.0, (ctx.epoch + (ctx.step + 1) / max(1, ctx.steps_per_epoch)) / self.p.warmup)

    def setup(self, s_shapes, t_shapes, info: SetupInfo) -> None:
        if info.num_classes < MLKD_MIN_CLASSES and len(self.p.temperatures) > 1:
            raise KDLabError(
                f"mlkd: {info.num_classes} classes: below {MLKD_MIN_CLASSES} classes its sum over "
                f"{len(self.p.temperatures)} temperatures (a gradient ~5x kd's) sent students to chance "
                "in our checks (issue 15); use kd or dkd, or set mlkd.temperatures to one value, e.g. [4.0]"
            )


# ---------------------------------------------------------------------------------------------- multi-teacher


class MTKDParams(TermParams):
    # Hinton et al. 2015 / You et al., KDD 2017: the target is the average of the teachers' softened
    # distributions; tau = 4 and weight 0.9 as the single-teacher `kd`.
    weight: float = Field(0.9, description="multiplier of this term's loss in the objective")
    tau: float = Field(4.0, gt=0, description="temperature")
    reduce: Literal["mean_probs", "sum_kd"] = Field(
        "mean_probs",
        description=(
            "mean_probs: KD to the mean of the teachers' softened outputs; sum_kd: weighted sum of per-teacher KD terms"
        ),
    )
    # per-teacher weights (normalised to sum 1 for mean_probs; used as given for sum_kd). None: 1/M each.
    weights: list[float] | None = Field(
        None, description=("per-teacher weights (normalised for mean_probs); null: 1/M each")
    )

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(w < 0 for w in v) or sum(v) <= 0):
            raise ValueError("weights must be non-negative with a positive sum")
        return v


@TERMS.register(
    "mtkd",
    description="multi-teacher KD: KD to the mean of the teachers' softened outputs",
    paper="You et al., KDD 2017",
)
class MultiTeacherKD(Term):
    """``reduce: mean_probs``: tau^2 KL(sum_m w_m p_m^tau || p_s^tau) with w summing to 1.
    ``reduce: sum_kd``: sum_m w_m tau^2 KL(p_m^tau || p_s^tau), logged per teacher (``teacher0`` ...)."""

    Params = MTKDParams

    def _weights(self, m: int) -> list[float]:
        if self.p.weights is None:
            return [1.0 / m] * m
        if len(self.p.weights) != m:
            raise KDLabError(f"mtkd: {len(self.p.weights)} weights for {m} teachers; give one weight per teacher")
        return list(self.p.weights)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if not ctx.teacher_outputs:
            raise KDLabError("mtkd needs at least one teacher: add `teacher:` (a list) to the recipe")
        for out in ctx.teacher_outputs:
            _check_pair(ctx.s_logits, out.logits, "mtkd")
        w = self._weights(len(ctx.teacher_outputs))
        tau = self.p.tau
        if self.p.reduce == "sum_kd":
            return {
                f"teacher{m}": w[m] * kl_div_tau(ctx.s_logits, out.logits, tau)
                for m, out in enumerate(ctx.teacher_outputs)
            }
        total = sum(w)
        # log of the mixture sum_m w_m p_m, in log space: logsumexp_m(log w_m + log p_m)
        log_each = torch.stack([F.log_softmax(out.logits.float() / tau, -1) for out in ctx.teacher_outputs])
        log_w = torch.tensor([wm / total for wm in w], device=log_each.device).log().view(-1, 1, 1)
        log_pt = torch.logsumexp(log_w + log_each, dim=0)
        log_ps = F.log_softmax(ctx.s_logits.float() / tau, -1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        return {"loss": kl * tau * tau}
