"""Online distillation between students trained together in one loop (``cohort:`` in the recipe).

The trainer builds one objective per cohort member and gives each the other members' logits as
``ctx.peer_logits`` (already detached). It sums all members' losses and takes one optimizer step, so the
cohort is updated jointly rather than alternately as in the DML paper's Algorithm 1; with the peers
treated as constants both schemes use the same per-network gradient direction at a step.
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdlab.errors import KDLabError
from kdlab.methods.base import StepContext, Term, TermParams
from kdlab.methods.logits import kl_div_tau
from kdlab.registry import TERMS


class DMLParams(TermParams):
    # Zhang et al., CVPR 2018 (Deep Mutual Learning): L_k = CE + 1/(K-1) sum_{l != k} KL(p_l || p_k),
    # no temperature (tau = 1) and weight 1 on the mimicry term.
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    # > 1 gives tau^2 KL(p_l^tau || p_k^tau), as in later collaborative works
    tau: float = Field(1.0, gt=0, description="temperature; > 1 gives tau^2 KL(p_peer^tau || p_self^tau)")


@TERMS.register(
    "dml",
    description="deep mutual learning: KL(p_peer || p_self) averaged over the cohort peers",
    paper="Zhang et al., CVPR 2018",
)
class DeepMutualLearning(Term):
    """Mean over peers of tau^2 KL(p_peer^tau || p_self^tau); the peers are constants (no gradient)."""

    Params = DMLParams
    needs_teacher = False

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if not ctx.peer_logits:
            raise KDLabError("dml needs peers: add `cohort: [{name: MODEL}]` to the recipe (at least one more student)")
        losses = []
        for peer in ctx.peer_logits:
            if peer.shape != ctx.s_logits.shape:
                raise KDLabError(
                    f"dml: peer logits {tuple(peer.shape)} differ from the student's {tuple(ctx.s_logits.shape)}"
                )
            losses.append(kl_div_tau(ctx.s_logits, peer.detach(), self.p.tau))
        return {"loss": torch.stack(losses).mean()}
