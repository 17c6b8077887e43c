"""One distillation step as a plain function: (batch, students, teachers, objectives) -> named losses.

``distill_step`` is what ``Trainer`` calls for every batch, and what someone else's training loop can call::

    result = distill_step(batch, [student], [objective], teachers=[teacher])
    result.total.backward()          # then clip, step, zero_grad as you like
    result.named                     # {"kd": tensor, "ce": tensor, ...} (detached, on the device)

The clean batch gets the teacher outputs from each source's ``clean`` (a cache lookup or a live forward);
extra views (mixup, CutMix, pick, backward-pass samples) run on new inputs, so they use the sources' ``live``
modules. Nothing here reads a tensor back to the host: the trainer accumulates the returned tensors on the
device and reads them at logging points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdlab.capture import Capture
from kdlab.engine.batch import Batch
from kdlab.methods.base import Objective, StepContext
from kdlab.views.extra import ViewInput


@dataclass
class Clock:
    """Where the step is in its stage (epoch-wise schedules such as BSS's read it)."""

    epoch: int = 0
    epochs: int = 1
    step: int = 0
    steps: int = 1


@dataclass
class StepResult:
    total: torch.Tensor  # the loss to backpropagate (summed over cohort students and views)
    named: dict[str, torch.Tensor]  # student 0's detached named losses; view losses prefixed "<view>/"
    stats: dict[str, Any] = field(default_factory=dict)  # view diagnostics, "view/<name>/<stat>"


@dataclass
class ExtraViews:
    """The recipe's extra views (name, view) and what building them needs."""

    views: Sequence[tuple[str, Any]] = ()
    gen: torch.Generator | None = None
    lo: torch.Tensor | None = None  # valid input bounds in normalised units, for views that perturb inputs
    hi: torch.Tensor | None = None
    data: Any = None  # the training split, for views that regenerate offline sets


def distill_step(
    batch: Batch,
    students: Sequence[nn.Module],
    objectives: Sequence[Objective],
    teachers: Sequence[Any] = (),
    *,
    captures: Sequence[Capture] | None = None,
    extra: ExtraViews | None = None,
    concat_views: bool = False,
    autocast: torch.dtype | None = None,
    clock: Clock | None = None,
) -> StepResult:
    """The objective of every student over the clean batch and every extra view. ``captures`` hold the
    students' forward hooks for the objectives' taps (made here, and removed, when not given)."""
    clock = clock or Clock()
    extra = extra or ExtraViews()
    own = captures is None
    if own:
        captures = [Capture(s, o.taps().student) for s, o in zip(students, objectives)]
    try:
        return _step(batch, students, objectives, list(teachers), captures, extra, concat_views, autocast, clock)
    finally:
        if own:
            for c in captures:
                c.remove()


def _step(
    batch: Batch,
    students: Sequence[nn.Module],
    objectives: Sequence[Objective],
    teachers: list[Any],
    captures: Sequence[Capture],
    extra: ExtraViews,
    concat_views: bool,
    autocast: torch.dtype | None,
    clock: Clock,
) -> StepResult:
    x, y, idx = batch.x, batch.y, batch.idx
    include_clean = not any(v.p.mode == "replace" for _, v in extra.views)
    batches: list[tuple[str, Any, float, str]] = []  # (name, ViewBatch | None, weight, targets)
    if include_clean:
        batches.append(("clean", None, 1.0, "all"))
    stats: dict[str, Any] = {}
    first_live = teachers[0].live if teachers else None
    for name, view in extra.views:
        vb = view(
            ViewInput(
                x=x,
                y=y,
                idx=idx,
                gen=extra.gen,
                teacher=first_live,
                student=students[0],
                lo=extra.lo,
                hi=extra.hi,
                epoch=clock.epoch,
                step=clock.step,
                data=extra.data,
            )
        )
        batches.append((name, vb, view.p.weight, view.p.targets))
        stats.update({f"view/{name}/{k}": v for k, v in vb.stats.items()})
    inputs = [x if vb is None else vb.x for _, vb, _, _ in batches]
    t_outs = []
    # A teacher given only for the held-out metrics (a CE baseline, a DML cohort run) is never run in the step.
    wanted = any(obj.needs_teacher for obj in objectives)
    for j, (_, vb, _, targets) in enumerate(batches):
        if not teachers or not wanted or targets == "labels":
            t_outs.append([])
        elif vb is None:  # the clean batch: a cache lookup or a live forward
            t_outs.append([t.clean(batch) for t in teachers])
        elif vb.teacher is not None:  # the view already ran the first teacher on x'
            t_outs.append([vb.teacher] + [t.live(vb.x) for t in teachers[1:]])
        else:
            t_outs.append([t.live(inputs[j]) for t in teachers])
    live_models = [t.live for t in teachers if t.live is not None]
    total = x.new_zeros((), dtype=torch.float32)
    named: dict[str, torch.Tensor] = {}
    ctx_autocast = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with ctx_autocast:
        per_student = [_student_passes(s, captures[k], inputs, concat_views) for k, s in enumerate(students)]
        for k in range(len(students)):
            for j, (name, vb, weight, targets) in enumerate(batches):
                logits, feats = per_student[k][j]
                ctx = StepContext(
                    x=inputs[j],
                    y=y if vb is None else vb.y,
                    idx=idx if vb is None else vb.idx,
                    s_logits=logits,
                    s_feats=feats,
                    teacher_outputs=t_outs[j],
                    peer_logits=[per_student[o][j][0].detach() for o in range(len(students)) if o != k],
                    student=students[k],
                    live_teachers=live_models,
                    view=name,
                    y_is_target=vb is None,
                    y_mix=None if vb is None else vb.y_mix,
                    epoch=clock.epoch,
                    epochs=clock.epochs,
                    step=clock.step,
                    steps_per_epoch=clock.steps,
                )
                loss, parts = objectives[k](ctx, targets=targets)
                total = total + weight * loss
                if k == 0:
                    named.update(parts if name == "clean" else {f"{name}/{n}": v for n, v in parts.items()})
    return StepResult(total, named, stats)


def _student_passes(student: nn.Module, capture: Capture, inputs: list[torch.Tensor], concat: bool):
    """(logits, feats) per input: one concatenated pass (BatchNorm sees all views as one batch) or one pass
    per input."""
    if len(inputs) == 1 or not concat:
        return [(student(inp), capture.pop()) for inp in inputs]
    sizes = [len(inp) for inp in inputs]
    logits = student(torch.cat(inputs))
    feats = capture.pop()
    split_feats = {k: v.split(sizes) for k, v in feats.items()}
    return [(lg, {k: v[j] for k, v in split_feats.items()}) for j, lg in enumerate(logits.split(sizes))]


class StepModule(nn.Module):
    """The students and their objectives as one module whose forward is :func:`distill_step`: what
    DistributedDataParallel wraps, so one DDP covers every trainable parameter (cohorts, connectors) and
    its gradient hooks see the step's whole graph. Returns ``(total, named, stats)`` (tensors DDP can walk)."""

    def __init__(self, students: nn.ModuleList, objectives: nn.ModuleList):
        super().__init__()
        self.students, self.objectives = students, objectives

    def forward(self, batch: Batch, teachers: Sequence[Any], **kwargs: Any):
        res = distill_step(batch, self.students, self.objectives, teachers, **kwargs)
        return res.total, res.named, res.stats
