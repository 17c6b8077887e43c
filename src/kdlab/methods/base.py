"""What a method is: a small ``Term`` that declares the taps it needs and returns named losses.

The engine never knows which method it runs: it builds the terms named in the recipe, asks them for
their taps, probes the tap shapes once (so terms can build connectors), then calls each term with a
``StepContext`` and sums ``weight * loss`` over everything returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from kdlab.schema import Strict

if TYPE_CHECKING:
    from kdlab.teacher import Teacher, TeacherOutput


class TermParams(Strict):
    """Parameters every term has. Subclasses add their own fields with the paper's defaults."""

    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")


@dataclass(frozen=True)
class Taps:
    """Module paths a term needs captured (``"layer3"``, ``"fc:in"``) in the student and the teacher."""

    student: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetupInfo:
    """Facts about the run a term may need when it builds itself (e.g. CRD's memory bank size)."""

    num_train: int
    num_classes: int
    input_shape: tuple[int, ...]


@dataclass
class FitData:
    """For terms that fit something to the teacher once before training (letKD's templates):
    ``teacher_features(taps)`` runs the frozen teacher over the whole training split without augmentation
    and returns {tap: N×... CPU tensor}; ``labels`` are the training labels in the same order."""

    teacher_features: Any
    labels: torch.Tensor
    num_classes: int
    seed: int
    run_dir: Any


@dataclass
class StepContext:
    """Everything a term may look at for one batch (the clean batch, or one extra view's batch)."""

    x: torch.Tensor  # the student's input (normalised)
    y: torch.Tensor  # the label of each sample's source image (a training target only when y_is_target)
    idx: torch.Tensor  # each sample's index in the training split
    s_logits: torch.Tensor  # the student's logits on x
    s_feats: dict[str, torch.Tensor]  # the student's features at the objective's taps
    teacher_outputs: list[TeacherOutput] = field(default_factory=list)  # one per teacher, on x
    peer_logits: list[torch.Tensor] = field(default_factory=list)  # detached logits of the other cohort members
    student: nn.Module | None = None
    live_teachers: list[Teacher] = field(default_factory=list)  # frozen modules that run on new inputs (BSS)
    view: str = "clean"  # "clean", or the name of the extra view (mixup, cutmix_pick, backward ...) x came from
    y_is_target: bool = True  # False on teacher-labelled views: y is the source sample's label, not a target
    y_mix: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (y_a, y_b, lam) on label-mixed views
    epoch: int = 0  # 0-based, within the stage
    epochs: int = 1
    step: int = 0  # 0-based, within the epoch
    steps_per_epoch: int = 1

    @property
    def t_logits(self) -> torch.Tensor:
        if not self.teacher_outputs:
            raise RuntimeError("this term needs a teacher, but the recipe has none")
        return self.teacher_outputs[0].logits

    @property
    def t_feats(self) -> dict[str, torch.Tensor]:
        return self.teacher_outputs[0].feats if self.teacher_outputs else {}

    @property
    def progress(self) -> float:
        """Fraction of the stage done, in [0, 1): epoch-wise schedules (BSS) read this."""
        return (self.epoch + self.step / max(1, self.steps_per_epoch)) / max(1, self.epochs)


def teacher_feature(ctx: StepContext, tap: str) -> torch.Tensor:
    """The first teacher's feature at ``tap`` as a constant float32 tensor (the one accessor of feature and
    relation terms); a tap that was not captured is named with the ones that were."""
    feats = ctx.t_feats
    if tap not in feats:
        raise RuntimeError(f"teacher feature {tap!r} was not captured (taps: {sorted(feats)})")
    return feats[tap].detach().float()


class Term(nn.Module):
    """Base class. ``Params`` validates the recipe block; ``forward`` returns {component: loss}.

    A component named ``"loss"`` is logged under the term's label; others as ``label/component``.
    Parameters a term creates in ``setup`` (connectors) are trained with the student and dropped at export.
    """

    Params: ClassVar[type[TermParams]] = TermParams
    needs_teacher: ClassVar[bool] = True
    label_term: ClassVar[bool] = False  # True for terms fitting hard labels: they alone see label-mixed views
    # True for terms that run the teacher on new inputs (BSS's attacks): a cache-only teacher cannot serve them
    needs_live_teacher: ClassVar[bool] = False

    def __init__(self, params: TermParams | None = None):
        super().__init__()
        self.p = params if params is not None else self.Params()

    def taps(self) -> Taps:
        return Taps()

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        """Called once with per-sample shapes of the declared taps (and ``"logits"``); build connectors here.
        ``t_shapes`` is empty when the recipe has no teacher."""

    def fit(self, data: FitData) -> None:
        """Called once after ``setup`` and before training (again on resume: keep it deterministic, or
        cache in ``data.run_dir``). Most terms need nothing here."""

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Objective(nn.Module):
    """A weighted sum of terms, keyed by the recipe's labels."""

    def __init__(self, terms: dict[str, Term]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms.values())

    def taps(self) -> Taps:
        s: list[str] = []
        t: list[str] = []
        for term in self.terms.values():
            tp = term.taps()
            s += [x for x in tp.student if x not in s]
            t += [x for x in tp.teacher if x not in t]
        return Taps(tuple(s), tuple(t))

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        for term in self.terms.values():
            term.setup(s_shapes, t_shapes, info)

    def fit(self, data: FitData) -> None:
        for term in self.terms.values():
            term.fit(data)

    def forward(self, ctx: StepContext, targets: str = "all") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``targets``: "all" terms (clean batch), only "teacher" terms (teacher-labelled views) or only
        "labels" terms (label-mixed views)."""
        total = ctx.s_logits.new_zeros((), dtype=torch.float32)
        named: dict[str, torch.Tensor] = {}
        for label, term in self.terms.items():
            if (targets == "teacher" and term.label_term) or (targets == "labels" and not term.label_term):
                continue
            for comp, value in term(ctx).items():
                named[label if comp == "loss" else f"{label}/{comp}"] = value.detach()
                total = total + term.p.weight * value
        return total, named
