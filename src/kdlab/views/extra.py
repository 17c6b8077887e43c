"""Extra views: additional, usually teacher-labelled batches built from the clean batch on the device.

Where ``data.augment`` transforms the clean batch in place (crop, flip), an *extra view* produces a second
batch x' (mixup, CutMix, CutMixPick, Cutout, backward-pass auxiliary samples). The engine then runs the
teacher on x' (unless the view already did, as pick and backward do) and the student on x', and computes
the recipe's whole objective on x' a second time with the view's weight — so every method, logit, feature
or relational, trains on the view. With ``targets: teacher`` (the default, "TL" in Wang et al.) the terms
that need true labels (``ce``) are skipped on x'; with ``targets: labels`` x' carries the mixed hard labels
of the classic mixup/CutMix rule instead and only label terms see it.

Recipe::

    views:
      - {name: cutmix_pick, criterion: teacher_entropy, m: 2}
    train: {concat_views: true}     # one student pass over [x, x'] (BatchNorm sees both) or separate passes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from kdlab.schema import Strict

if TYPE_CHECKING:
    from kdlab.teacher import Teacher, TeacherOutput


class ExtraParams(Strict):
    """Fields every extra view has."""

    weight: float = Field(
        1.0, ge=0, description="multiplier of the objective computed on x' (Wang et al.: 1, inside alpha)"
    )
    targets: Literal["teacher", "labels"] = Field(
        "teacher", description="what the terms on x' learn from: the teacher's outputs on x' or the (mixed) labels"
    )
    mode: Literal["add", "replace"] = Field(
        "add", description="add x' to the clean batch (the paper) or train on x' only"
    )


@dataclass
class ViewInput:
    """What a view may use to build x' (the clean batch is already augmented and normalised)."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    gen: torch.Generator
    teacher: Teacher | None
    student: nn.Module
    lo: torch.Tensor  # per-channel bounds of valid inputs in normalised units, shaped to broadcast with x
    hi: torch.Tensor
    epoch: int = 0
    step: int = 0
    data: Any = None  # the training split and a loader factory, for views that regenerate offline sets


@dataclass
class ViewBatch:
    """x' and what comes with it. ``y_mix = (y_a, y_b, lam)`` (lam per sample, weight of y_a) for label
    targets; ``teacher`` when the view already ran the teacher on exactly ``x`` (saves a pass)."""

    x: torch.Tensor
    idx: torch.Tensor
    y: torch.Tensor
    y_mix: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    teacher: TeacherOutput | None = None
    stats: dict[str, float] = field(default_factory=dict)


class ExtraView:
    """Base class of extra views: ``__call__(ViewInput) -> ViewBatch``."""

    kind: ClassVar[str] = "extra"
    Params: ClassVar[type[ExtraParams]] = ExtraParams

    def __init__(self, params: ExtraParams | None = None):
        self.p = params if params is not None else self.Params()

    def __call__(self, inp: ViewInput) -> ViewBatch:  # pragma: no cover - abstract
        raise NotImplementedError
