"""The objectives of a stage: one per student, built from the recipe's terms, checked against what the teacher
sources can serve (before the first step, one line naming the term or view that cannot be served), set up on
the probed tap shapes and fitted (letKD's templates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdlab.capture import probe_shapes
from kdlab.errors import KDLabError
from kdlab.methods.base import FitData, Objective, SetupInfo
from kdlab.recipe import TermSpec
from kdlab.teachers.base import LIVE


def check_teacher_needs(obj: Objective, teachers: Sequence[Any], extra_views: Sequence[tuple[str, Any]]) -> None:
    """Every need of the objective and the extra views against the teacher sources' capabilities."""
    for i, t in enumerate(teachers):
        for label, term in obj.terms.items():
            if not term.needs_teacher:
                continue
            missing = t.missing_taps(list(term.taps().teacher))
            if missing:
                raise KDLabError(
                    f"term {label!r} needs teacher features at {missing}, which the teacher cache "
                    f"{getattr(t, 'path', '')} does not store; add them to teacher.cache.taps and "
                    "rebuild, or drop `cache:`"
                )
            if getattr(term, "needs_live_teacher", False) and LIVE not in t.capabilities:
                raise KDLabError(
                    f"term {label!r} runs the teacher on new inputs, but teacher {i} is a cache "
                    "only; give the teacher `run:` or `model:` next to `cache:`"
                )
        for name, view in extra_views:
            if view.p.targets == "teacher" and LIVE not in t.capabilities:
                raise KDLabError(
                    f"view {name!r} needs the teacher on new inputs, but teacher {i} is a cache "
                    "only; give the teacher `run:` or `model:` next to `cache:`"
                )


def teacher_shapes(
    teachers: Sequence[Any], taps: list[str], input_shape: tuple[int, ...], device: torch.device
) -> dict[str, Any]:
    """Per-sample shapes of the first teacher's logits and taps: probed on the live model, or read from a cache."""
    if not teachers:
        return {}
    t = teachers[0]
    if t.live is not None:
        return probe_shapes(t.live.model, taps, input_shape, device)
    meta = t.meta
    shapes = {tap: torch.Size(meta["feature_shapes"][tap]) for tap in taps}
    shapes["logits"] = torch.Size([meta["num_classes"]])
    return shapes


def build_objectives(
    terms: dict[str, TermSpec],
    students: Sequence[nn.Module],
    teachers: Sequence[Any],
    extra_views: Sequence[tuple[str, Any]],
    dataset: Any,
    device: torch.device,
    fit: FitData,
) -> nn.ModuleList:
    objectives = []
    for student in students:
        obj = Objective({label: spec.build() for label, spec in terms.items()})
        if obj.needs_teacher and not teachers:
            need = [lbl for lbl, t in obj.terms.items() if t.needs_teacher]
            raise KDLabError(f"objective terms {need} need a teacher: add `teacher:` to the recipe")
        check_teacher_needs(obj, teachers, extra_views)
        taps = obj.taps()
        for t in teachers:  # the live module captures the taps too: views run it on new inputs
            if t.live is not None:
                t.live.add_taps(list(taps.teacher))
        s_shapes = probe_shapes(student, taps.student, dataset.input_shape, device)
        t_shapes = teacher_shapes(teachers, list(taps.teacher), dataset.input_shape, device)
        info = SetupInfo(
            num_train=len(dataset.train), num_classes=dataset.num_classes, input_shape=tuple(dataset.input_shape)
        )
        obj.setup(s_shapes, t_shapes, info)
        obj.to(device)
        obj.fit(fit)
        objectives.append(obj)
    return nn.ModuleList(objectives).to(device)


def carry_over(prev: nn.ModuleList, new: nn.ModuleList) -> None:
    """A term that keeps its label and kind from one stage to the next keeps its trained state (e.g. FT's
    paraphraser, pre-trained in stage 1 and used in stage 2)."""
    for old_obj, new_obj in zip(prev, new):
        for label, term in new_obj.terms.items():
            old = old_obj.terms[label] if label in old_obj.terms else None  # noqa: SIM401  (a ModuleDict has no get)
            if old is not None and type(old) is type(term):
                term.load_state_dict(old.state_dict(), strict=False)
