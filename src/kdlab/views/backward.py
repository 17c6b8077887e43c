"""Backward-pass auxiliary samples: inputs pushed along the gradient of the teacher–student divergence.

Jafari, Rezagholizadeh & Ghodsi, "Improved knowledge distillation by utilizing backward pass knowledge in
neural networks", arXiv 2301.12006. Only the abstract is public (no full text, no code), so this view is **our
reconstruction** (research note ``seeds-da-backward.md`` Method 2, §2.2–2.6); every number obtained with it
must be labelled as such. Fixed by the abstract: a divergence D between teacher and student outputs, new
samples made by moving real inputs along ``∇_x D`` (gradient *ascent*: towards where the student disagrees
most), added to the training data and trained on with KD. Everything else is a parameter here:

* divergence ``D(x) = KL(p_t^τ(x) ‖ p_s^τ(x))`` per sample, summed over classes (no τ² factor), ``tau`` = 4;
* ``steps`` K (1) ascent steps of total budget ``eta`` (0.1) as per-element RMS in normalised units:
  ``x ← Π(x + s)`` with ``s = (η/K)·sqrt(d)·g/‖g‖`` per sample (``step_rule: l2``), ``(η/K)·sign(g)``
  (``sign``) or ``(η/K)·g`` (``raw``: η is then a plain step size, not an RMS);
* ``Π``: optional ball of radius ``eps`` around the start (``ball: l2 | linf``), then always the clip to the
  valid input range ``[lo, hi]`` (per channel, normalised units). As the start lies inside ``[lo, hi]``,
  the clip only moves coordinates towards it, so both constraints hold at the end;
* ``direction: random`` is the control the note insists on (§2.5-1): a Gaussian direction put through the same
  step rule and rescaled, per sample and per step, to the norm the gradient step would have had; same
  projection, same compute (the gradient is still computed for its norm);
* ``schedule: online`` regenerates from every batch (from a random ``fraction`` of it) with the current
  student; ``offline`` regenerates a set from the training split (``fraction`` of it, one aux sample per
  source sample) every ``every`` epochs, keeps it in this object and draws ``round(ratio·B)`` samples per step
  with the engine's generator (without replacement while the set is large enough). The set is also
  regenerated when the epoch counter goes back or another student object comes in (a new stage).

The engine trains on the result with the recipe's terms at weight ``weight`` = λ_aux (0.25, the pilot's value;
1 was less stable) and never attaches the original hard label to x̃ (``targets`` is fixed to ``teacher``;
``ViewBatch.y`` is for bookkeeping only). The note's pilot also needed gradient-norm clipping of the student
update (``train.grad_clip: 5``) to avoid collapses; that is a training setting, not part of this view.

Generation hygiene: both networks in **eval** mode (every module's own training flag is saved and restored, so
BatchNorm running statistics and dropout are untouched); the teacher's parameters are frozen by ``Teacher``; the
input gradient comes from ``torch.autograd.grad`` w.r.t. the input only, so no parameter ever gets ``.grad``.
Student forward hooks (the engine's feature taps) do fire during generation; the engine pops them right after
its own student forward, which overwrites them.

Cost per call (online, K steps, on the generated samples — B·fraction of them):

* K forward + backward passes through teacher **and** student (the gradient flows through both networks);
* 1 teacher forward (no grad, taps captured) for the targets, returned in ``ViewBatch.teacher`` so the engine
  does not run the teacher on x̃ again;
* 1 student forward without grad for the ``d_after`` statistic (``stats_pass: false`` drops it and the stat).

So teacher K+1 forwards, student K+1 (K with ``stats_pass: false``), K backwards each. ``direction: random``
costs the same. Offline: the same per regeneration for every sample of the set (the ``d_after`` pass there is
one teacher and one student forward without grad), plus 1 teacher forward on the ρ·B drawn samples per step.
The offline set lives on the device (one normalised copy per source sample; CIFAR-10/100: ~600 MB in float32)
and is not checkpointed: after a resume it is regenerated at the first step with the resumed student.

Text / embedding inputs are **not** handled yet. The ascent itself is :func:`ascend`, which knows nothing about
models: it perturbs any float tensor (an image batch, or a batch of input embeddings N×L×E), takes a
``divergence_fn(x) -> per-sample D`` closure, optional bounds (``None`` for embeddings) and an optional
``mask`` (e.g. 0 at padding and special tokens; the RMS is then over the unmasked elements). An NLP view
would build ``divergence_fn`` from the two models' embedding-input forwards (note §2.2-5 options a/b).

Stats (averaged per epoch by the engine): ``d_before`` (mean D at the starting points), ``d_after`` (mean D at
x̃), ``clipped`` (fraction of x̃'s elements at a clip bound), ``clipped_start`` (the same for the starting
points — normalised images often sit at the bounds already, e.g. black digit pixels), ``l2`` (mean per-sample
L2 distance to the start). Offline they are the generation-time values of the drawn samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from kdlab.errors import KDLabError
from kdlab.registry import VIEWS
from kdlab.views.extra import ExtraParams, ExtraView, ViewBatch, ViewInput

StepRule = Literal["l2", "sign", "raw"]


# ---------------------------------------------------------------------------------------------- the ascent
def divergence(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample ``KL(softmax(t/τ) ‖ softmax(s/τ))``, summed over classes (last dim) and any further
    non-batch dims (e.g. token positions); computed in float32 from log-softmaxes (no log of 0)."""
    lt = F.log_softmax(t_logits.float() / tau, dim=-1)
    ls = F.log_softmax(s_logits.float() / tau, dim=-1)
    d = (lt.exp() * (lt - ls)).sum(-1)
    return d.reshape(len(d), -1).sum(1)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (N,) to broadcast with ``x``."""
    return v.reshape(len(v), *([1] * (x.dim() - 1)))


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(len(v), -1).norm(dim=1)


def _rule(g: torch.Tensor, rule: str, h: float, count: torch.Tensor) -> torch.Tensor:
    """The step of size ``h`` per element for direction ``g`` (``count`` = active elements per sample)."""
    if rule == "l2":
        scale = h * count.sqrt() / _norm(g).clamp_min(1e-30)  # a zero gradient gives a zero step
        return g * _per_sample(scale, g)
    if rule == "sign":
        return h * torch.sign(g)
    if rule == "raw":
        return h * g
    raise ValueError(f"unknown step rule {rule!r}")


def project(
    x: torch.Tensor,
    x0: torch.Tensor,
    *,
    ball: str | None = None,
    eps: float | None = None,
    lo: torch.Tensor | None = None,
    hi: torch.Tensor | None = None,
) -> torch.Tensor:
    """Π: into the ``ball`` (``l2``/``linf``) of radius ``eps`` around ``x0``, then clip to ``[lo, hi]``."""
    if ball == "l2":
        delta = x - x0
        factor = (eps / _norm(delta).clamp_min(1e-30)).clamp(max=1.0)
        x = x0 + delta * _per_sample(factor, delta)
    elif ball == "linf":
        x = x0 + (x - x0).clamp(-eps, eps)
    elif ball is not None:
        raise ValueError(f"unknown ball {ball!r}")
    if lo is not None:
        x = torch.maximum(x, lo.to(device=x.device, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(device=x.device, dtype=x.dtype))
    return x


@dataclass
class Ascent:
    """Result of :func:`ascend`: the final points (detached), D at the start (per sample), and with
    ``record=True`` each step's input gradient and its step *before* projection."""

    x: torch.Tensor
    d_before: torch.Tensor
    grads: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)


def ascend(
    x0: torch.Tensor,
    divergence_fn: Callable[[torch.Tensor], torch.Tensor],
    params: Any,
    lo: torch.Tensor | None = None,
    hi: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    *,
    mask: torch.Tensor | None = None,
    ascent: bool = True,
    record: bool = False,
) -> Ascent:
    """Model-agnostic K-step ascent of ``divergence_fn`` from ``x0`` (any float tensor, batch first).

    ``params`` needs ``steps``, ``eta``, ``step_rule``, ``direction``, ``ball``, ``eps`` (a
    :class:`Backward.Params` does). ``divergence_fn(x)`` returns D per sample (N,) with a graph to ``x``;
    only ``x`` is differentiated (``torch.autograd.grad``), so nothing else gets ``.grad``. ``mask`` (0/1,
    broadcastable to ``x0``) freezes elements (padding, special tokens) and the RMS counts only active ones.
    ``ascent=False`` descends instead (a sign check for tests, never a recipe option). Random directions are
    drawn on ``gen``'s device."""
    k = int(params.steps)
    h = float(params.eta) / k
    sign = 1.0 if ascent else -1.0
    x0 = x0.detach()
    m = None if mask is None else mask.to(device=x0.device, dtype=x0.dtype).expand_as(x0)
    count = (
        torch.full((len(x0),), float(x0[0].numel()), device=x0.device) if m is None else m.reshape(len(m), -1).sum(1)
    )
    x = x0.clone()
    out = Ascent(x=x0, d_before=torch.zeros(len(x0), device=x0.device))
    for j in range(k):
        xv = x.detach().requires_grad_(True)
        with torch.enable_grad():
            d = divergence_fn(xv)
            (g,) = torch.autograd.grad(d.sum(), xv, allow_unused=True)
        if g is None:  # D does not depend on x (e.g. identical constant networks): no step
            g = torch.zeros_like(xv)
        g = g.detach()
        if j == 0:
            out.d_before = d.detach().float()
        if m is not None:
            g = g * m
        s = _rule(g, params.step_rule, h, count)
        if params.direction == "random":
            r = torch.randn(x0.shape, generator=gen, device=gen.device if gen is not None else None)
            r = r.to(device=x0.device, dtype=x0.dtype)
            if m is not None:
                r = r * m
            u = _rule(r, params.step_rule, h, count)
            s = u * _per_sample(_norm(s) / _norm(u).clamp_min(1e-30), u)
        s = sign * s
        if record:
            out.grads.append(g)
            out.steps.append(s)
        x = project(x + s, x0, ball=params.ball, eps=params.eps, lo=lo, hi=hi)
    out.x = x.detach()
    return out


# ---------------------------------------------------------------------------------------------- the view
class BackwardParams(ExtraParams):
    """Recipe fields of the ``backward`` view (defaults: research note §2.3, all [ours])."""

    weight: float = Field(0.25, ge=0, description="λ_aux: weight of the objective on x̃")
    targets: Literal["teacher"] = Field("teacher", description="always the teacher: never the original hard label on x̃")
    tau: float = Field(4.0, gt=0, description="temperature of the divergence D that the ascent increases")
    steps: int = Field(1, ge=1, description="K, ascent steps per sample")
    eta: float = Field(
        0.1, ge=0, description="total budget, per-element RMS in normalised units (l2/sign); a plain step size for raw"
    )
    step_rule: StepRule = Field(
        "l2", description="l2: (η/K)·sqrt(d)·g/‖g‖ per sample; sign: (η/K)·sign(g); raw: (η/K)·g"
    )
    ball: Literal["l2", "linf"] | None = Field(None, description="optional ball of radius eps around the start")
    eps: float | None = Field(None, gt=0, description="radius of `ball` (give both or neither)")
    direction: Literal["gradient", "random"] = Field(
        "gradient", description="random: a same-norm random direction (the control)"
    )
    schedule: Literal["online", "offline"] = Field(
        "online", description="online: from every batch; offline: a set regenerated every `every` epochs"
    )
    fraction: float = Field(1.0, gt=0, le=1, description="of the batch (online) or of the training split (offline)")
    every: int = Field(5, ge=1, description="offline: regenerate every E epochs")
    ratio: float = Field(1.0, gt=0, description="offline: ρ auxiliary samples per clean sample per step")
    stats_pass: bool = Field(True, description="one no-grad student forward on x̃ for the d_after statistic")

    @model_validator(mode="after")
    def _ball_needs_eps(self) -> BackwardParams:
        if (self.ball is None) != (self.eps is None):
            raise ValueError("`ball` and `eps` go together: give both (ball: l2|linf, eps > 0) or neither")
        return self


def _bound_fraction(x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None) -> torch.Tensor:
    at = torch.zeros_like(x, dtype=torch.bool)
    if lo is not None:
        at |= x <= lo.to(device=x.device, dtype=x.dtype)
    if hi is not None:
        at |= x >= hi.to(device=x.device, dtype=x.dtype)
    return at.reshape(len(x), -1).float().mean(1)


def _subset(n: int, fraction: float, gen: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
    """Sorted random subset of ``round(fraction·n)`` (≥ 1) positions, or None for all of them."""
    if fraction >= 1.0:
        return None
    m = max(1, int(round(fraction * n)))
    perm = torch.randperm(n, generator=gen, device=gen.device if gen is not None else None)
    return perm[:m].sort().values.to(device)


@VIEWS.register(
    "backward",
    description="auxiliary samples by gradient ascent on KL(teacher‖student) w.r.t. the input (reconstruction)",
    paper="Jafari, Rezagholizadeh & Ghodsi, arXiv 2301.12006 (backward-pass knowledge; our reconstruction)",
)
class Backward(ExtraView):
    """Backward-pass auxiliary samples; see the module docstring for the recipe, cost and stats."""

    Params = BackwardParams

    def __init__(self, params: BackwardParams | Mapping[str, Any] | None = None):
        if isinstance(params, Mapping):
            params = BackwardParams.model_validate(dict(params))
        super().__init__(params)
        self.generations = 0  # offline: how many times the set was (re)generated
        self.generated_at: list[int] = []  # offline: the epochs of those regenerations
        self._aux: dict[str, torch.Tensor] | None = None
        self._student_id: int | None = None

    # -- generation on one chunk ------------------------------------------------------------------
    def _generate(
        self, inp: ViewInput, x0: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """Ascend from ``x0`` with both networks in eval mode; per-sample stats and (stats_pass) the student's
        no-grad logits at x̃."""
        teacher, student, p = inp.teacher, inp.student, self.p

        def div(x: torch.Tensor) -> torch.Tensor:
            return divergence(teacher.forward_grad(x).logits, student(x), p.tau)

        flags = [(mod, mod.training) for mod in student.modules()]
        student.eval()
        try:
            res = ascend(x0, div, p, inp.lo, inp.hi, inp.gen)
            s_after = None
            if p.stats_pass:
                with torch.no_grad():
                    s_after = student(res.x).float()
        finally:
            for mod, was in flags:
                mod.training = was
        x = res.x
        per = {
            "d_before": res.d_before,
            "clipped": _bound_fraction(x, inp.lo, inp.hi),
            "clipped_start": _bound_fraction(x0, inp.lo, inp.hi),
            "l2": _norm((x - x0).float()),
        }
        return x, per, s_after

    # -- schedules ----------------------------------------------------------------------------------
    def __call__(self, inp: ViewInput) -> ViewBatch:
        if inp.teacher is None:
            raise KDLabError("view 'backward' needs a teacher (the divergence is teacher vs student)")
        if self.p.schedule == "online":
            return self._online(inp)
        return self._offline(inp)

    def _online(self, inp: ViewInput) -> ViewBatch:
        sub = _subset(len(inp.x), self.p.fraction, inp.gen, inp.x.device)
        x0 = inp.x if sub is None else inp.x[sub]
        idx = inp.idx if sub is None else inp.idx[sub.to(inp.idx.device)]
        y = inp.y if sub is None else inp.y[sub.to(inp.y.device)]
        x, per, s_after = self._generate(inp, x0)
        t_out = inp.teacher(x)
        if s_after is not None:
            per["d_after"] = divergence(t_out.logits, s_after, self.p.tau)
        stats = {k: float(v.mean()) for k, v in per.items()}
        return ViewBatch(x=x, idx=idx, y=y, teacher=t_out, stats=stats)

    def _regenerate(self, inp: ViewInput) -> None:
        data = inp.data
        if data is None or not hasattr(data, "split") or not hasattr(data, "prepare"):
            raise KDLabError(
                "view 'backward' with schedule: offline needs the engine's training data "
                "(ViewInput.data with .split and .prepare)"
            )
        split = data.split
        n = len(split)
        device = inp.x.device
        src = _subset(n, self.p.fraction, inp.gen, torch.device("cpu"))
        src = torch.arange(n) if src is None else src
        chunk = max(1, len(inp.x))
        xs, pers = [], []
        for i in range(0, len(src), chunk):
            rows = src[i : i + chunk]
            raw = split.x[rows.to(split.x.device)].to(device)
            x0 = data.prepare(raw)
            x, per, s_after = self._generate(inp, x0)
            if s_after is not None:
                per["d_after"] = divergence(inp.teacher(x).logits, s_after, self.p.tau)
            xs.append(x)
            pers.append(per)
        aux = {k: torch.cat([p[k] for p in pers]) for k in pers[0]}
        aux["x"] = torch.cat(xs)
        aux["idx"] = src.to(device)
        aux["y"] = split.y[src.to(split.y.device)].to(device)
        self._aux = aux
        self.generations += 1
        self.generated_at.append(int(inp.epoch))

    def _offline(self, inp: ViewInput) -> ViewBatch:
        last = self.generated_at[-1] if self.generated_at else None
        stale = (
            self._aux is None
            or last is None
            or inp.epoch >= last + self.p.every
            or inp.epoch < last
            or self._student_id != id(inp.student)
        )  # epoch counter went back / new student: new stage
        if stale:
            self._regenerate(inp)
            self._student_id = id(inp.student)
        aux = self._aux
        pool = len(aux["x"])
        want = max(1, int(round(self.p.ratio * len(inp.x))))
        gdev = inp.gen.device if inp.gen is not None else None
        if want <= pool:
            sel = torch.randperm(pool, generator=inp.gen, device=gdev)[:want]
        else:
            sel = torch.randint(0, pool, (want,), generator=inp.gen, device=gdev)
        sel = sel.to(aux["x"].device)
        x = aux["x"][sel]
        stats = {
            k: float(aux[k][sel].mean()) for k in ("d_before", "d_after", "clipped", "clipped_start", "l2") if k in aux
        }
        return ViewBatch(x=x, idx=aux["idx"][sel], y=aux["y"][sel], teacher=inp.teacher(x), stats=stats)


__all__ = ["Ascent", "Backward", "BackwardParams", "ascend", "divergence", "project"]
