"""Held-out evaluation: every student on test (and validation) with the teacher's logits for agreement and
KL(T‖S). The teacher's held-out logits come from its source once (a cache stores them; a live teacher computes
them on first use), and each split's labels are gathered once, in loader order."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdlab.engine.metrics import classification_metrics


class Evaluator:
    def __init__(
        self, test_loader: Any, val_loader: Any, prepare: Any, teacher: Any = None, autocast: torch.dtype | None = None
    ):
        self.test_loader, self.val_loader = test_loader, val_loader
        self.prepare, self.teacher, self.autocast = prepare, teacher, autocast
        self._labels: dict[str, torch.Tensor] = {}

    def _autocast(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def labels(self, split: str) -> torch.Tensor:
        if split not in self._labels:
            loader = self.test_loader if split == "test" else self.val_loader
            self._labels[split] = torch.cat([y.cpu() for _, y, _ in loader.iter_epoch(0)])
        return self._labels[split]

    def teacher_logits(self) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        return self.teacher.eval_logits("test", self.test_loader, self.prepare)

    @torch.no_grad()
    def logits(self, model: nn.Module, loader: Any) -> torch.Tensor:
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        with self._autocast(dev):
            out = torch.cat([model(self.prepare(x)).float().cpu() for x, _, _ in loader.iter_epoch(0)])
        model.train(was)
        return out

    @torch.no_grad()
    def __call__(self, students: Sequence[nn.Module]) -> dict[str, float]:
        """Metrics of student 0 (and cohort top-1) on test; on validation too when the run carves one."""
        t_logits = self.teacher_logits()
        out: dict[str, float] = {}
        ys = self.labels("test")
        for k, student in enumerate(students):
            m = classification_metrics(self.logits(student, self.test_loader), ys, t_logits)
            if k == 0:
                out.update(m)
            else:
                out[f"cohort{k}/test/top1"] = m["test/top1"]
        if self.val_loader is not None:
            out.update(
                classification_metrics(self.logits(students[0], self.val_loader), self.labels("val"), prefix="val/")
            )
        return out

    def teacher_metrics(self) -> dict[str, float]:
        t_logits = self.teacher_logits()
        if t_logits is None:
            return {}
        return classification_metrics(t_logits, self.labels("test"))
