"""Logit-matching terms: cross-entropy on labels and Hinton KD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.methods.base import StepContext, Term, TermParams
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


class CEParams(TermParams):
    weight: float = 1.0
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@TERMS.register("ce", description="cross-entropy with the (possibly noisy) labels", paper="-")
class CrossEntropy(Term):
    Params = CEParams
    needs_teacher = False

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(ctx.s_logits.float(), ctx.y, label_smoothing=self.p.label_smoothing)}


class KDParams(TermParams):
    # Hinton et al. 2015; tau=4 and weights 0.9 KD / 0.1 CE as in RepDistiller and the seed papers.
    weight: float = 0.9
    tau: float = Field(4.0, gt=0)


@TERMS.register("kd", description="Hinton KD: tau^2 KL(p_t^tau || p_s^tau)", paper="Hinton et al., 2015")
class HintonKD(Term):
    Params = KDParams

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": kl_div_tau(ctx.s_logits, ctx.t_logits, self.p.tau)}
