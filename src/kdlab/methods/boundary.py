"""Decision-boundary distillation: BSS (Heo et al., AAAI 2019), with its epoch-scheduled KD partner.

BSS ("Knowledge Distillation with Adversarial Samples Supporting Decision Boundary") moves a few training
samples towards the teacher's decision boundary with a targeted attack on the *teacher*, and distils the
teacher's outputs on those boundary-supporting samples (BSS) into the student. The full objective of the
paper is::

    L = CE(y, z_s) + λ_KD(e)·KD_τ(x) + λ_BSS(e)·KD_τ(x_adv)

with KD_τ the soft cross-entropy −Σ_k p_t^τ(k) log p_s^τ(k) averaged over samples (NOT multiplied by τ²),
τ = 3, λ_KD(e) = 1 + max(3(1 − e/E), 0) and λ_BSS(e) = max(2(1 − (4/3)·e/E), 0). Here ``bss`` is the last
term (schedule included) and ``bss_kd`` the middle one; ``recipes/methods/bss.yaml`` puts the three together.

Sources: paper and official code (github.com/bhheo/BSS_distillation, ``train_BSS_distillation.py`` and
``attacks/attack_BSS.py``); all defaults below are from there.

Cost: on every batch where λ_BSS > 0 the term runs up to ``steps`` (10) extra teacher forward+backward
passes (gradients to the input only) on at most ``max_samples`` (64) base samples, one more teacher forward
on the result, and one student forward+backward on it. Lower ``max_samples`` / ``steps`` to cap it; once
λ_BSS reaches 0 (75% of the stage) nothing extra is run.

Schedules read ``ctx.progress`` (fraction of the stage done, per step), where the original evaluates them
once per epoch at e/E with 1-based e; the two agree to within 1/E.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from kdlab.errors import KDLabError
from kdlab.methods.base import StepContext, Term, TermParams
from kdlab.registry import TERMS


def soft_cross_entropy(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """mean_i −Σ_k softmax(t_i/τ)_k · log_softmax(s_i/τ)_k, in float32 (no τ² factor, as in BSS)."""
    p_t = F.softmax(t_logits.float() / tau, dim=-1)
    log_ps = F.log_softmax(s_logits.float() / tau, dim=-1)
    return -(p_t * log_ps).sum(-1).mean()


def bss_kd_schedule(f: float, base: float = 1.0, extra: float = 3.0) -> float:
    """λ_KD at stage fraction f = e/E: base + max(extra·(1 − f), 0); 4 → 1 with the defaults."""
    return base + max(extra * (1.0 - f), 0.0)


def bss_schedule(f: float, start: float = 2.0, zero_at: float = 0.75) -> float:
    """λ_BSS at stage fraction f = e/E: max(start·(1 − f/zero_at), 0); 2 → 0 at 75% with the defaults."""
    return max(start * (1.0 - f / zero_at), 0.0)


def select_base_samples(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    y: torch.Tensor,
    max_samples: int,
    require_student_correct: bool = True,
) -> torch.Tensor:
    """Indices of the base samples: correctly classified by the teacher (and the student, by default); when
    more than ``max_samples``, those with the largest Σ_{k≠y} (p_t(k) − p_s(k))² (softmax at τ = 1)."""
    with torch.no_grad():
        t, s = t_logits.detach().float(), s_logits.detach().float()
        ok = t.argmax(-1) == y
        if require_student_correct:
            ok &= s.argmax(-1) == y
        idx = ok.nonzero().flatten()
        if idx.numel() > max_samples:
            diff = (F.softmax(t[idx], -1) - F.softmax(s[idx], -1)) ** 2
            score = diff.sum(-1) - diff.gather(1, y[idx].unsqueeze(1)).squeeze(1)
            idx = idx[score.topk(max_samples).indices]
        return idx


def sample_target_classes(t_logits: torch.Tensor) -> torch.Tensor:
    """One target class per row, drawn from the teacher's non-top-1 classes with P(k) = p_t(k)/(1 − max p_t)."""
    with torch.no_grad():
        p = F.softmax(t_logits.detach().float(), -1)
        top1 = p.argmax(-1, keepdim=True)
        # a floor keeps the draw defined when the other classes underflow to 0 (saturated teacher)
        w = p.clamp_min(1e-30).scatter(1, top1, 0.0)
        return torch.multinomial(w, 1).squeeze(1)


def bss_attack(
    teacher,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: int = 10,
    step_size: float = 0.3,
    clamp: tuple[float, float] | None = (-2.5, 2.5),
) -> torch.Tensor:
    """Targeted iterative attack on the teacher (Heo et al. 2019, ``attack_BSS.py``).

    Each step moves every still-unflipped sample along the L2-normalised input gradient of
    (score_target − score_top1) by ``step_size`` · (score_top1 − score_target + 1e-4), where top1 is the
    teacher's class on the clean input; a sample stops moving once the teacher's top-1 differs from that
    class. The result is clamped to ``clamp`` (normalised-input units; None = no clamp).
    ``teacher`` is a :class:`kdlab.teacher.Teacher` (``forward_grad`` keeps the graph to the input only,
    in eval mode, so neither its parameters nor its BatchNorm buffers change).
    """
    x0 = x.detach()
    x_adv = x0.clone()
    source = None
    rows = torch.arange(len(x0), device=x0.device)
    for _ in range(steps):
        xv = x_adv.clone().requires_grad_(True)
        scores = teacher.forward_grad(xv).logits.float()
        if source is None:
            source = scores.detach().argmax(-1)
        s_src, s_tgt = scores[rows, source], scores[rows, target]
        (grad,) = torch.autograd.grad((s_tgt - s_src).sum(), xv)
        active = scores.detach().argmax(-1) == source
        if not bool(active.any()):
            break
        gap = (s_src - s_tgt).detach()
        norm = grad.float().flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = step_size * active.float() * (gap + 1e-4) / norm
        step = scale.view(-1, *([1] * (x0.dim() - 1))) * grad.float()
        x_adv = (x_adv.float() + step).to(x0.dtype)
        if clamp is not None:
            x_adv = x_adv.clamp(clamp[0], clamp[1])
    return x_adv.detach()


class BSSParams(TermParams):
    # λ_BSS is applied inside the term (its schedule), so the recipe weight stays 1.
    weight: float = Field(
        1.0, description=("multiplier of this term's loss in the objective (λ_BSS is scheduled inside the term)")
    )
    # temperature = 3 [train_BSS_distillation.py]
    tau: float = Field(3.0, gt=0, description="temperature of the soft cross-entropy on the adversarial samples")
    # attack_size = 64 [train_BSS_distillation.py]; caps the attack cost
    max_samples: int = Field(
        64, ge=1, description=("at most this many samples of a batch are attacked (caps the attack cost)")
    )
    # num_steps = 10 [train_BSS_distillation.py]
    steps: int = Field(10, ge=1, description="attack steps towards the other class's boundary")
    # step_alpha = 0.3 [train_BSS_distillation.py, norm=2 attack]
    step_size: float = Field(0.3, gt=0, description="L2 step size of the attack")
    # torch.clamp(-2.5, 2.5) [attack_BSS.py]: the range of CIFAR-10 inputs after mean/std normalisation.
    # kdlab inputs are normalised the same way; set null for no clamp or a range that fits your data.
    clamp: tuple[float, float] | None = Field(
        (-2.5, 2.5), description=("input range the attack is clamped to (normalised units); null: no clamp")
    )
    # λ_BSS(e) = max(start·(1 − e/(zero_at·E)), 0): attack_ratio = max(2(1 − 4/3·e/E), 0) [train_BSS_distillation.py]
    start: float = Field(2.0, ge=0, description="λ_BSS at the first epoch")
    zero_at: float = Field(0.75, gt=0, description="fraction of training at which λ_BSS reaches 0 (linear decay)")
    # The paper selects samples classified correctly by teacher AND student (this default, as in our spec);
    # the official code checks the teacher only (set false for that).
    require_student_correct: bool = Field(
        True,
        description=(
            "attack only samples both teacher and student classify correctly (the paper); false: the teacher only (the "
            "official code)"
        ),
    )

    @model_validator(mode="after")
    def _clamp_order(self) -> BSSParams:
        if self.clamp is not None and not self.clamp[0] < self.clamp[1]:
            raise ValueError(f"clamp must be (low, high) with low < high; got {self.clamp}")
        return self


@TERMS.register(
    "bss",
    description="BSS: KD on adversarial boundary-supporting samples found by attacking the "
    "teacher, λ_BSS 2→0 by 75% of training",
    paper="Heo et al., AAAI 2019",
)
class BSS(Term):
    """λ_BSS(progress) · KD_τ(x_adv); returns a finite 0 when there is no base sample or λ_BSS = 0."""

    Params = BSSParams
    needs_live_teacher = True  # the attack runs the teacher on new inputs

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        p = self.p
        zero = (ctx.s_logits.float() * 0.0).sum()
        lam = bss_schedule(ctx.progress, p.start, p.zero_at)
        if lam <= 0:
            return {"loss": zero}
        if not ctx.live_teachers or ctx.student is None:
            raise KDLabError(
                "bss needs the teacher model and the student module in the step context "
                "(it attacks the teacher and runs the student on the adversarial samples)"
            )
        idx = select_base_samples(ctx.s_logits, ctx.t_logits, ctx.y, p.max_samples, p.require_student_correct)
        if idx.numel() == 0:
            return {"loss": zero}
        target = sample_target_classes(ctx.t_logits[idx])
        teacher = ctx.live_teachers[0]
        x_adv = bss_attack(teacher, ctx.x[idx], target, steps=p.steps, step_size=p.step_size, clamp=p.clamp)
        t_adv = teacher(x_adv).logits  # no_grad, eval mode
        try:
            s_adv = ctx.student(x_adv)  # the student stays in its (train) mode, as in the original
        except ValueError as e:  # one base sample through a training BatchNorm1d (e.g. an MLP with BN)
            if len(x_adv) == 1 and "more than 1 value per channel" in str(e):
                return {"loss": zero}
            raise
        return {"loss": lam * soft_cross_entropy(s_adv, t_adv, p.tau)}


class BSSKDParams(TermParams):
    # λ_KD is applied inside the term (its schedule), so the recipe weight stays 1.
    weight: float = Field(
        1.0, description=("multiplier of this term's loss in the objective (λ_KD is scheduled inside the term)")
    )
    # temperature = 3 [train_BSS_distillation.py]
    tau: float = Field(3.0, gt=0, description="temperature of the soft cross-entropy (no tau^2)")
    # λ_KD(e) = base + max(extra·(1 − e/E), 0): ratio = max(3(1 − e/E), 0) + 1 [train_BSS_distillation.py]
    base: float = Field(1.0, description="λ_KD floor: λ_KD(e) = base + max(extra·(1 − e/E), 0)")
    extra: float = Field(3.0, description="λ_KD's extra weight at the start, decaying linearly to 0")


@TERMS.register(
    "bss_kd",
    description="KD as in BSS: soft cross-entropy at tau=3 (no tau^2), weight 4→1 over training",
    paper="Heo et al., AAAI 2019",
)
class BSSKD(Term):
    """λ_KD(progress) · (−Σ p_t^τ log p_s^τ) on the clean batch."""

    Params = BSSKDParams

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        lam = bss_kd_schedule(ctx.progress, self.p.base, self.p.extra)
        return {"loss": lam * soft_cross_entropy(ctx.s_logits, ctx.t_logits, self.p.tau)}
