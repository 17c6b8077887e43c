"""Contrastive representation distillation (CRD; Tian et al., ICLR 2020).

Student and teacher penultimate features go through embedding heads (linear + L2 norm, ``feat_dim`` 128),
built in ``setup`` from the probed sizes and trained with the student. Two memory banks keep a running
embedding of *every training sample* — one of student embeddings, one of teacher embeddings — keyed by the
sample index ``ctx.idx``. For each sample in the batch, its teacher embedding is scored against the student
bank at its own index (the positive) and at K sampled indices (negatives), and symmetrically the student
embedding against the teacher bank; each side gets the NCE loss of Tian et al. (Eq. 18 of the paper, as
implemented in RepDistiller ``crd/criterion.py``), and the term returns their sum.

Memory: the two banks hold ``2 × N × feat_dim`` float32 (N = ``info.num_train``), plus N int64 labels:
51 MB for CIFAR-100 (N = 50,000, feat_dim 128), 1.3 GB for ImageNet (N = 1.28 M). ``memory_limit_mb``
(default 2048) refuses larger banks with an error that says how to shrink them. Per step the scores need
``B × (K + 1)`` floats per side, plus a gather of ``B × (K + 1) × feat_dim`` floats when that is smaller than
a copy of the bank (RepDistiller always gathers: 537 MB per side at B = 64, K = 16384).

The banks (and the labels seen so far and the NCE normalisation constants) are registered buffers, so they
are saved in the run's checkpoint and restored on resume. Negatives are drawn with the *global* torch RNG
(no private ``torch.Generator``): the engine reseeds it at the start of every epoch, so the draws — and a
run resumed from an epoch-end checkpoint — are deterministic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdlab.errors import KDLabError
from kdlab.methods.base import SetupInfo, StepContext, Taps, Term, TermParams
from kdlab.registry import TERMS


class CRDParams(TermParams):
    # beta = 0.8 with CE weight 1 and no KD: RepDistiller scripts/run_cifar_distill.sh (`-a 0 -b 0.8`, `-r`
    # defaults to 1); "CRD+KD" in the same script adds KD with `-a 1` (see recipes/methods/crd.yaml).
    weight: float = Field(0.8, description="beta, the multiplier of the contrastive loss")
    # embedding size 128 (Tian et al. 2020; RepDistiller --feat_dim)
    feat_dim: int = Field(128, ge=1, description="size of the L2-normalised embeddings")
    # negatives per positive, 16384 (Tian et al. 2020; RepDistiller --nce_k);
    nce_k: int = Field(16384, ge=1, description="negatives per positive (bounded at setup to the training size - 1)")
    # bounded at setup to num_train - 1
    # temperature 0.07 (RepDistiller --nce_t)
    nce_t: float = Field(0.07, gt=0, description="temperature of the NCE logits")
    nce_m: float = Field(0.5, ge=0, lt=1, description="momentum of the memory-bank update")
    # RepDistiller crd/criterion.py eps
    eps: float = Field(1e-7, gt=0, description="numerical epsilon of the NCE criterion")
    # "class": negatives from other classes than the anchor's, RepDistiller's default `--mode exact`
    # (CIFAR100InstanceSample draws them from cls_negative). Labels are learnt from the batches seen, so in the
    # first epoch a negative of a not-yet-seen sample may share the anchor's class. "instance": any other sample.
    negatives: Literal["class", "instance"] = Field(
        "class", description=("class: negatives from other classes than the anchor's; instance: any other sample")
    )
    # guard on the two banks' size (kdlab's own, not from a paper)
    memory_limit_mb: float = Field(2048.0, gt=0, description="refuse memory banks larger than this (MB)")
    # RepDistiller embeds feat[-1], the pooled penultimate feature
    student_layer: str = Field("@penultimate", description="student feature embedded (module path or @alias)")
    teacher_layer: str = Field("@penultimate", description="teacher feature embedded (module path or @alias)")


def _bank(n: int, dim: int) -> torch.Tensor:
    """RepDistiller's initialisation: uniform in [-s, s], s = 1 / sqrt(dim / 3) (rows of norm ~1)."""
    s = 1.0 / math.sqrt(dim / 3.0)
    return torch.rand(n, dim).mul_(2 * s).add_(-s)


@TERMS.register(
    "crd",
    description="contrastive representation distillation: NCE against memory banks of embeddings",
    paper="Tian et al., ICLR 2020",
)
class CRD(Term):
    Params = CRDParams

    def taps(self) -> Taps:
        return Taps(student=(self.p.student_layer,), teacher=(self.p.teacher_layer,))

    @staticmethod
    def bank_megabytes(num_train: int, feat_dim: int) -> float:
        """Size of the buffers CRD keeps: two float32 banks of num_train × feat_dim, plus int64 labels."""
        return (2 * num_train * feat_dim * 4 + num_train * 8) / 2**20

    def setup(self, s_shapes, t_shapes, info: SetupInfo) -> None:
        n, dim = int(info.num_train), self.p.feat_dim
        if n < 2:
            raise KDLabError(f"crd needs at least 2 training samples to draw negatives; the training set has {n}")
        need = self.bank_megabytes(n, dim)
        if need > self.p.memory_limit_mb:
            raise KDLabError(
                f"crd: the memory banks need {need:.0f} MB (2 banks x {n} training samples x feat_dim {dim} "
                f"float32, plus labels), over memory_limit_mb={self.p.memory_limit_mb:g}. Lower `feat_dim` "
                f"(e.g. {max(1, dim // 2)}), train on a subset (`data.train_subset`), or raise "
                f"`memory_limit_mb` if the device has room."
            )
        self.num_train = n
        self.k = min(self.p.nce_k, n - 1)  # bounded: never more negatives than other samples
        s_dim = math.prod(s_shapes[self.p.student_layer])
        t_dim = math.prod(t_shapes[self.p.teacher_layer])
        self.embed_s = nn.Linear(s_dim, dim)
        self.embed_t = nn.Linear(t_dim, dim)
        self.register_buffer("memory_s", _bank(n, dim))  # student embeddings, one row per training sample
        self.register_buffer("memory_t", _bank(n, dim))  # teacher embeddings
        self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))  # -1: not seen yet
        self.register_buffer("log_z", torch.zeros(2))  # log of the NCE normalisation constants (student, teacher)
        self.register_buffer("z_ready", torch.zeros((), dtype=torch.bool))

    # -------------------------------------------------------------------------------------------- pieces
    def sample_indices(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, K+1) bank indices: column 0 the positive (the sample itself), then K negatives drawn uniformly
        with replacement from the global RNG, redrawn (up to 8 rounds) while equal to the anchor or, in
        ``class`` mode, of the anchor's (known) class."""
        dev = self.memory_s.device
        b, n = idx.shape[0], self.num_train
        neg = torch.randint(0, n, (b, self.k), device=dev)
        for _ in range(8):
            bad = neg == idx.unsqueeze(1)
            if self.p.negatives == "class":
                bad = bad | (self.labels[neg] == y.unsqueeze(1))
            count = int(bad.sum())
            if count == 0:
                break
            neg[bad] = torch.randint(0, n, (count,), device=dev)
        return torch.cat([idx.unsqueeze(1), neg], dim=1)

    def scores(
        self, v: torch.Tensor, memory: torch.Tensor, sel: torch.Tensor, *, gather: bool | None = None
    ) -> torch.Tensor:
        """<memory[sel[b, j]], v[b]> as (B, K+1). Either gathers the (B, K+1, D) rows (RepDistiller) or scores
        against a copy of the whole bank and picks, whichever needs less memory (``gather`` forces one).
        The bank is copied either way so that the in-place update below never touches a tensor autograd saved."""
        b, kk = sel.shape
        n, d = memory.shape
        if gather is None:
            gather = b * kk * d < n * (d + b)
        if gather:
            w = memory.index_select(0, sel.reshape(-1)).view(b, kk, d)
            return torch.bmm(w, v.unsqueeze(2)).squeeze(2)
        return (v @ memory.clone().t()).gather(1, sel)

    def nce_loss(self, logits: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
        """NCE with noise distribution 1/N and K noise samples, in log space:
        P = exp(s / T) / Z;
        loss = -(1/B) [sum_b log(P_pos / (P_pos + K/N + eps)) + sum_{b,k} log((K/N) / (P_neg + K/N + eps))].
        ``logits`` are s / T, column 0 the positive."""
        k = logits.shape[1] - 1
        c = k / self.num_train
        log_c = math.log(c)
        log_denom_c = math.log(c + self.p.eps)
        log_p = logits - log_z
        log_denom = torch.logaddexp(log_p, torch.full_like(log_p, log_denom_c))
        pos = log_p[:, 0] - log_denom[:, 0]
        neg = log_c - log_denom[:, 1:]
        return -(pos.sum() + neg.sum()) / logits.shape[0]

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        s_raw = ctx.s_feats[self.p.student_layer]
        t_raw = ctx.t_feats[self.p.teacher_layer].detach()
        dev = self.memory_s.device
        idx = ctx.idx.to(dev).long()
        y = ctx.y.to(dev).long()
        with torch.autocast(s_raw.device.type, enabled=False):
            v_s = F.normalize(self.embed_s(s_raw.flatten(1).float()), dim=1)
            v_t = F.normalize(self.embed_t(t_raw.flatten(1).float()), dim=1)
            if self.p.negatives == "class":
                self.labels.index_copy_(0, idx, y)
            sel = self.sample_indices(idx, y)
            t = self.p.nce_t
            logit_s = self.scores(v_s, self.memory_t, sel) / t  # student anchor vs the teacher bank
            logit_t = self.scores(v_t, self.memory_s, sel) / t  # teacher anchor vs the student bank
            with torch.no_grad():  # Z = N * mean exp(s/T) over the first batch, then fixed (RepDistiller)
                first = torch.stack([torch.logsumexp(x.flatten(), 0) - math.log(x.numel()) for x in (logit_s, logit_t)])
                first = first + math.log(self.num_train)
                self.log_z.copy_(torch.where(self.z_ready, self.log_z, first))
                self.z_ready.fill_(True)
            loss = self.nce_loss(logit_s, self.log_z[0]) + self.nce_loss(logit_t, self.log_z[1])
            with torch.no_grad():  # momentum update of both banks at the batch's indices, rows re-normalised
                m = self.p.nce_m
                for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                    upd = bank.index_select(0, idx).mul_(m).add_(v.detach(), alpha=1 - m)
                    bank.index_copy_(0, idx, F.normalize(upd, dim=1))
        return {"loss": loss}
