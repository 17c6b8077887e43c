"""Relational terms: the student matches relations *between the samples of a batch*, not single outputs.

* ``rkd`` — Relational KD (Park et al., CVPR 2019): distance and angle potentials on the penultimate embeddings.
* ``sp``  — Similarity-preserving KD (Tung & Mori, ICCV 2019): batch similarity matrices of a feature map.
* ``cc``  — Correlation congruence (Peng et al., ICCV 2019): kernel correlation matrices of linear embeddings.
* ``pkt`` — Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): KL between conditional
  probability distributions built from a cosine kernel.

All four compare B×B (RKD's angle: B×B×B) matrices of one batch, so they need no connector between
different channel counts (CC builds its own embedding heads). Every loss is computed in float32 with
autocast off (bf16/fp16 features are cast up first), and teacher-side quantities are computed without
gradient. Batch of 1: there is no pair to relate; each term returns a finite 0 (still attached to the
student's graph, so ``backward()`` works) rather than raising, so a ragged last batch never stops a run.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdlab.methods.base import SetupInfo, StepContext, Taps, Term, TermParams, teacher_feature
from kdlab.registry import TERMS


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Flatten per sample and cast to float32 (relations are computed in fp32 whatever the autocast)."""
    return x.flatten(1).float()


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


# ------------------------------------------------------------------------------------------------ RKD


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``e`` (B, D), computed directly (no Gram-matrix cancellation),
    so identical rows give exactly 0 and a zero gradient."""
    return torch.cdist(e.unsqueeze(0), e.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)


def rkd_distance_potential(e: torch.Tensor) -> torch.Tensor:
    """psi_D(i, j) = ||e_i - e_j|| / mu, mu = mean distance over all B(B-1) pairs of distinct samples i != j
    (Park et al. 2019, Eq. 4; RepDistiller and the authors' code clamp each squared distance at 1e-12, so
    duplicate embeddings count as distance ~0 in the mean, never drop out of it).

    When mu is 0 (batch of 1, all embeddings identical) there is nothing to normalise: the potential is
    then all zeros, never NaN."""
    d = pairwise_distances(e)
    b = d.shape[0]
    mu = d.sum() / max(1, b * (b - 1))  # the diagonal is exactly 0, so the sum runs over i != j
    return d / torch.where(mu > 0, mu, torch.ones_like(mu))


def rkd_angle_potential(e: torch.Tensor) -> torch.Tensor:
    """psi_A(i, j, k) = <(e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j||> as a (B, B, B) tensor indexed
    [j, i, k] (anchor first). A zero difference vector normalises to 0 (as ``F.normalize`` does), so the
    angle involving it is 0, and its gradient is 0 too (no 1/eps blow-up when student embeddings coincide).

    For D <= B the unit difference vectors (B, B, D) are formed and multiplied (one batched matmul, as in
    RepDistiller); for D > B the same values come from the distance matrix by the polarisation identity
    <e_i - e_j, e_k - e_j> = (d_ji^2 + d_jk^2 - d_ik^2) / 2, so memory stays O(B^3) instead of O(B^2 D)."""
    b, dim = e.shape
    d = pairwise_distances(e)
    inv = torch.where(d > 0, 1.0 / d.clamp(min=torch.finfo(d.dtype).tiny), torch.zeros_like(d))
    if dim <= b:
        unit = (e.unsqueeze(0) - e.unsqueeze(1)) * inv.unsqueeze(2)  # [j, i] = (e_i - e_j) / d_ji
        return unit @ unit.transpose(1, 2)
    d2 = d * d
    num = 0.5 * (d2.unsqueeze(2) + d2.unsqueeze(1) - d2.unsqueeze(0))  # [j, i, k]
    return num * (inv.unsqueeze(2) * inv.unsqueeze(1))


class RKDParams(TermParams):
    # beta = 1: RepDistiller scripts/run_cifar_distill.sh (`-b 1`); Park et al. 2019
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    # lambda_D = 25 (Park et al. 2019; RepDistiller RKDLoss w_d)
    distance_weight: float = Field(25.0, ge=0, description="lambda_D, weight of the distance potential")
    # lambda_A = 50 (Park et al. 2019; RepDistiller RKDLoss w_a)
    angle_weight: float = Field(50.0, ge=0, description="lambda_A, weight of the angle potential")
    # the pooled embedding = input of fc (Park et al. 2019; RepDistiller feat[-1])
    student_layer: str = Field("@penultimate", description="student embedding (module path or @alias)")
    teacher_layer: str = Field("@penultimate", description="teacher embedding (module path or @alias)")


@TERMS.register(
    "rkd",
    description="relational KD: distance (x25) + angle (x50) potentials, smooth-L1, on embeddings",
    paper="Park et al., CVPR 2019",
)
class RKD(Term):
    """Components ``dist`` = 25 * SmoothL1(psi_D^s, psi_D^t) and ``angle`` = 50 * SmoothL1(psi_A^s, psi_A^t),
    both averaged over all entries (B^2 and B^3, diagonals included, as in RepDistiller). Memory: the angle
    potential holds B^3 floats per side (16.8 M for B = 256), plus B^2 D when D <= B."""

    Params = RKDParams

    def taps(self) -> Taps:
        return Taps(student=(self.p.student_layer,), teacher=(self.p.teacher_layer,))

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        s_raw = ctx.s_feats[self.p.student_layer]
        with _no_autocast(s_raw):
            s = _fp32(s_raw)
            with torch.no_grad():
                t = _fp32(teacher_feature(ctx, self.p.teacher_layer))
                t_d = rkd_distance_potential(t) if self.p.distance_weight else None
                t_a = rkd_angle_potential(t) if self.p.angle_weight else None
            out: dict[str, torch.Tensor] = {}
            if self.p.distance_weight:
                out["dist"] = self.p.distance_weight * F.smooth_l1_loss(rkd_distance_potential(s), t_d)
            if self.p.angle_weight:
                out["angle"] = self.p.angle_weight * F.smooth_l1_loss(rkd_angle_potential(s), t_a)
        return out or {"loss": s.sum() * 0.0}


# ------------------------------------------------------------------------------------------------ SP


def sp_similarity(f: torch.Tensor) -> torch.Tensor:
    """G = row-L2-normalise(Q Q^T), Q = f reshaped to (B, C*H*W); a zero row stays zero."""
    q = _fp32(f)
    return F.normalize(q @ q.t(), p=2, dim=1)


class SPParams(TermParams):
    # gamma = 3000 (Tung & Mori 2019 for CIFAR; RepDistiller `-b 3000`)
    weight: float = Field(3000.0, description="gamma, the multiplier of the similarity-preserving loss")
    # The last stage map before pooling (RepDistiller feat[-2]). The paper sums the loss over several
    # (student, teacher) layer pairs: list them here; `teacher_layers` (default: the same) pairs one to one.
    layers: list[str] = Field(
        default_factory=lambda: ["@last"],
        min_length=1,
        description=("student maps whose batch similarity matrices are matched"),
    )
    teacher_layers: list[str] | None = Field(
        None, description=("teacher maps paired one to one with `layers`; null: the same names")
    )

    @model_validator(mode="after")
    def _same_length(self) -> SPParams:
        if self.teacher_layers is not None and len(self.teacher_layers) != len(self.layers):
            raise ValueError(
                f"teacher_layers has {len(self.teacher_layers)} entries but layers has "
                f"{len(self.layers)}: they are paired one to one"
            )
        return self


@TERMS.register(
    "sp",
    description="similarity-preserving KD: ||G_t - G_s||_F^2 / B^2 on batch similarity matrices",
    paper="Tung & Mori, ICCV 2019",
)
class SimilarityPreserving(Term):
    """Sum over the listed layer pairs of ||G_t - G_s||_F^2 / B^2 (no adapter needed: G is B×B)."""

    Params = SPParams

    def _pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.p.layers, self.p.teacher_layers or self.p.layers))

    def taps(self) -> Taps:
        pairs = self._pairs()
        return Taps(
            student=tuple(dict.fromkeys(s for s, _ in pairs)), teacher=tuple(dict.fromkeys(t for _, t in pairs))
        )

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        total = None
        for s_tap, t_tap in self._pairs():
            s_raw = ctx.s_feats[s_tap]
            with _no_autocast(s_raw):
                with torch.no_grad():
                    g_t = sp_similarity(teacher_feature(ctx, t_tap))
                g_s = sp_similarity(s_raw)
                b = g_s.shape[0]
                loss = (g_t - g_s).pow(2).sum() / (b * b)
            total = loss if total is None else total + loss
        return {"loss": total}


# ------------------------------------------------------------------------------------------------ CC


def cc_correlation(e: torch.Tensor, kernel: str, gamma: float, order: int) -> torch.Tensor:
    """B×B correlation matrix of the embeddings ``e``.

    ``gaussian``: k(x, y) = exp(-gamma ||x - y||^2) = exp(-gamma ||x||^2) exp(-gamma ||y||^2) exp(2 gamma x.y),
    with the last factor replaced by its Taylor expansion to ``order`` P: sum_{p=0..P} (2 gamma x.y)^p / p!
    (Peng et al. 2019); for L2-normalised embeddings the prefactor is exp(-2 gamma).
    ``bilinear``: k(x, y) = x.y."""
    g = e @ e.t()
    if kernel == "bilinear":
        return g
    sq = e.pow(2).sum(1)
    series = torch.ones_like(g)
    term = torch.ones_like(g)
    for p in range(1, order + 1):
        term = term * (2.0 * gamma) * g / p
        series = series + term
    return torch.exp(-gamma * (sq.unsqueeze(1) + sq.unsqueeze(0))) * series


class CCParams(TermParams):
    # beta = 50: calibrated to RepDistiller's tuned CC term (`-b 0.02` on its own correlation loss, the CIFAR-100
    # benchmark rows), since the paper gives no value we could check. On identical 128-d embeddings at
    # initialisation (resnet8x4/resnet32x4 and resnet8/resnet20, B = 64) 0.02 * L_RepDistiller ~ 0.04 (~1% of the
    # initial CE) while this paper-form L_CC ~ 8e-4: beta = 50 puts it at the same share (0.02 left it ~1e-4 of CE).
    weight: float = Field(50.0, description="beta, the multiplier of the correlation-congruence loss")
    # linear embedding size 128: RepDistiller --feat_dim (LinearEmbed)
    feat_dim: int = Field(128, ge=1, description="size of the linear embeddings of both networks")
    kernel: Literal["gaussian", "bilinear"] = Field(
        "gaussian", description=("gaussian: Taylor-approximated RBF kernel; bilinear: plain inner products")
    )
    # RBF gamma = 0.4 (Peng et al. 2019, as in our spec; PDF not re-read here)
    gamma: float = Field(0.4, gt=0, description="RBF gamma of the gaussian kernel")
    # Taylor order P = 2 (Peng et al. 2019, as in our spec; PDF not re-read here)
    order: int = Field(2, ge=0, description="Taylor order P of the gaussian kernel")
    normalize: bool = Field(True, description="L2-normalise the embeddings before the kernel")
    # RepDistiller embeds feat[-1], the pooled penultimate feature
    student_layer: str = Field("@penultimate", description="student feature embedded (module path or @alias)")
    teacher_layer: str = Field("@penultimate", description="teacher feature embedded (module path or @alias)")


@TERMS.register(
    "cc",
    description="correlation congruence: ||C_t - C_s||_F^2 / B^2 of Taylor-RBF kernels of embeddings",
    paper="Peng et al., ICCV 2019",
)
class CorrelationCongruence(Term):
    """Student and teacher penultimate features each go through a linear embedding head (built in ``setup``
    from the probed sizes, trained with the student, dropped at export); loss = ||C_t - C_s||_F^2 / B^2.

    Note: RepDistiller's ``Correlation`` (code e-mailed by the authors) computes a different quantity
    (products of |f_s - f_t| between consecutive samples), about 2000x larger on the same embeddings; the
    default weight 50 is its 0.02 rescaled to this loss (see ``CCParams.weight``)."""

    Params = CCParams

    def taps(self) -> Taps:
        return Taps(student=(self.p.student_layer,), teacher=(self.p.teacher_layer,))

    def setup(self, s_shapes, t_shapes, info: SetupInfo) -> None:
        s_dim = math.prod(s_shapes[self.p.student_layer])
        t_dim = math.prod(t_shapes[self.p.teacher_layer])
        self.embed_s = nn.Linear(s_dim, self.p.feat_dim)
        self.embed_t = nn.Linear(t_dim, self.p.feat_dim)

    def _embed(self, head: nn.Module, f: torch.Tensor) -> torch.Tensor:
        e = head(f.flatten(1).to(head.weight.dtype)).float()
        return F.normalize(e, p=2, dim=1) if self.p.normalize else e

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        s_raw = ctx.s_feats[self.p.student_layer]
        t_raw = teacher_feature(ctx, self.p.teacher_layer).detach()
        with _no_autocast(s_raw):
            e_s = self._embed(self.embed_s, s_raw.float())
            e_t = self._embed(self.embed_t, t_raw.float())  # the teacher head is trained; the teacher is not
            c_s = cc_correlation(e_s, self.p.kernel, self.p.gamma, self.p.order)
            c_t = cc_correlation(e_t, self.p.kernel, self.p.gamma, self.p.order)
            b = c_s.shape[0]
            return {"loss": (c_t - c_s).pow(2).sum() / (b * b)}


# ------------------------------------------------------------------------------------------------ PKT


def pkt_conditional(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-stochastic matrix P[i, j] = K(i, j) / sum_k K(i, k), K = (cos + 1) / 2 (the authors' code and
    RepDistiller include the diagonal K(i, i) = 1). A zero feature has cosine 0 with everything."""
    x = _fp32(f)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


class PKTParams(TermParams):
    # RepDistiller `-b 30000`; the paper (Passalis & Tefas 2018) trains PKT alone (weight 1)
    weight: float = Field(30000.0, description="multiplier of this term's loss in the objective")
    # eps = 1e-7 (authors' code passalis/probabilistic_kt, RepDistiller PKT)
    eps: float = Field(1e-7, gt=0, description="numerical epsilon of the cosine kernel")
    # the penultimate representation (RepDistiller feat[-1]; the paper transfers the last hidden layer's output)
    student_layer: str = Field("@penultimate", description="student representation (module path or @alias)")
    teacher_layer: str = Field("@penultimate", description="teacher representation (module path or @alias)")


@TERMS.register(
    "pkt",
    description="probabilistic KT: KL between cosine-kernel conditional distributions",
    paper="Passalis & Tefas, ECCV 2018",
)
class PKT(Term):
    """mean_{i,j} P_t[i,j] log((P_t[i,j] + eps) / (P_s[i,j] + eps)) over all B^2 entries (the authors' code;
    the paper writes the sum over j != i of KL(P_t(.|i) || P_s(.|i)), which differs by the diagonal and
    the 1/B^2 scale that the weight 30000 absorbs)."""

    Params = PKTParams

    def taps(self) -> Taps:
        return Taps(student=(self.p.student_layer,), teacher=(self.p.teacher_layer,))

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        s_raw = ctx.s_feats[self.p.student_layer]
        eps = self.p.eps
        with _no_autocast(s_raw):
            with torch.no_grad():
                p_t = pkt_conditional(teacher_feature(ctx, self.p.teacher_layer), eps)
            p_s = pkt_conditional(s_raw, eps)
            return {"loss": (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()}
