"""The live frozen teacher: eval mode, no parameter gradients, ``no_grad`` forward, optional autocast.

The wrapper is a plain object, not an ``nn.Module`` attribute of anything the student owns, so the teacher
never appears in the student's state_dict, optimizer or checkpoints. It is put in eval mode once; before each
forward only the root module's ``training`` flag is checked (a cheap guard that re-evaluates the whole module
if anything switched it back to training mode), instead of walking every submodule on every call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab.capture import Capture
from kdlab.teachers.base import FEATURES, LIVE, LOGITS, TeacherOutput


class LiveTeacher:
    capabilities = frozenset({LOGITS, FEATURES, LIVE})

    def __init__(
        self,
        model: nn.Module,
        taps: list[str] | None = None,
        *,
        autocast: torch.dtype | None = None,
        name: str = "teacher",
    ):
        self.model = model
        self.name = name
        self.autocast = autocast
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.capture = Capture(model, taps or [])
        self.samples_seen = 0  # samples forwarded so far: the engine reports teacher passes per step from it
        self._eval: dict[str, torch.Tensor] = {}

    # -------------------------------------------------------------------------------- TeacherSource
    @property
    def live(self) -> LiveTeacher:
        return self

    def clean(self, batch: Any) -> TeacherOutput:
        return self(batch.x)

    def missing_taps(self, taps: list[str]) -> list[str]:
        return []

    @torch.no_grad()
    def eval_logits(self, split: str, loader: Any, prepare: Any) -> torch.Tensor:
        """Held-out logits of a split (CPU float32), computed once: the teacher is frozen."""
        if split not in self._eval:
            seen = self.samples_seen
            self._eval[split] = torch.cat([self(prepare(x)).logits.cpu() for x, _, _ in loader.iter_epoch(0)])
            self.samples_seen = seen  # evaluation is not a training cost
        return self._eval[split]

    # -------------------------------------------------------------------------------- the module
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def add_taps(self, taps: list[str]) -> None:
        """Taps are declared by the terms, so they are known only after the objective is built."""
        new = [t for t in taps if t not in self.capture.taps]
        if new:
            old = self.capture.taps
            self.capture.remove()
            self.capture = Capture(self.model, old + new)

    def _forward(self, x: torch.Tensor) -> TeacherOutput:
        if self.model.training:  # guard: whatever happened to the module, the teacher is evaluated in eval mode
            self.model.eval()
        self.samples_seen += len(x)
        if self.autocast is not None:
            with torch.autocast(x.device.type, dtype=self.autocast):
                logits = self.model(x)
        else:
            logits = self.model(x)
        feats = self.capture.pop()
        return TeacherOutput(logits.float(), {k: v.float() for k, v in feats.items()})

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        with torch.no_grad():
            return self._forward(x)

    def forward_grad(self, x: torch.Tensor) -> TeacherOutput:
        """A forward pass that keeps the graph to the *input* (BSS attacks, backward-pass samples);
        the teacher's own parameters still get no gradient."""
        with torch.enable_grad():
            return self._forward(x)

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> LiveTeacher:
        self.model.to(device)
        if memory_format is not None:
            self.model.to(memory_format=memory_format)
        return self
