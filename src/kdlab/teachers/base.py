"""What the engine asks of a teacher: the ``TeacherSource`` protocol and its capabilities.

A teacher is anything that can give teacher outputs for the *clean* training batch (the batch the loader
drew, after ``data.augment``): a live frozen module (``live.py``) or a stored soft-label cache (``cached.py``,
keyed by sample index and augmentation parameters). Views and terms that need the teacher on *new* inputs
(mixup/CutMix images, CutMixPick pools, backward-pass samples, BSS attacks, letKD's template fitting) use the
source's ``live`` module, which a cache-only teacher does not have: the trainer checks every need against the
capabilities before the first step and names the term or view that cannot be served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from kdlab.engine.batch import Batch
    from kdlab.teachers.live import LiveTeacher

LOGITS = "logits"
FEATURES = "features"  # features at the source's `taps` (any tap for a live teacher)
LIVE = "live"  # a differentiable module that can run on new inputs


@dataclass
class TeacherOutput:
    logits: torch.Tensor
    feats: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class TeacherSource(Protocol):
    """``clean(batch)`` → outputs for the clean batch; ``eval_logits(split, loader, prepare)`` → held-out
    logits (computed once); ``live`` → the live module for new inputs, or None; ``serves(taps)`` → the
    subset of taps the source cannot serve for the clean batch."""

    name: str
    capabilities: frozenset[str]

    @property
    def live(self) -> LiveTeacher | None: ...

    def clean(self, batch: Batch) -> TeacherOutput: ...

    def eval_logits(self, split: str, loader: Any, prepare: Any) -> torch.Tensor: ...

    def missing_taps(self, taps: list[str]) -> list[str]: ...
