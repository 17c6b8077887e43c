"""Optimisers and learning-rate schedules, looked up by name.

The schedule is a pure function of (epoch, step), so resuming needs no scheduler state: the learning
rate at any point is recomputed from the recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from kdlab.recipe import OptimSpec, ScheduleSpec


def _sgd(params: Iterable, s: OptimSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay
    )


def _adamw(params: Iterable, s: OptimSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable, OptimSpec], torch.optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw}


def build_optimizer(params: Iterable, spec: OptimSpec) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.name](params, spec)


def _multistep(s: ScheduleSpec, t: float) -> float:
    # Stepped at epoch boundaries, as torch's MultiStepLR stepped once per epoch.
    return s.gamma ** sum(1 for m in s.scaled_milestones if math.floor(t) >= m)


def _cosine(s: ScheduleSpec, t: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(t, s.total_epochs) / s.total_epochs))


def _constant(s: ScheduleSpec, t: float) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[ScheduleSpec, float], float]] = {
    "multistep": _multistep,
    "cosine": _cosine,
    "constant": _constant,
}


def lr_factor(spec: ScheduleSpec, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at (0-based epoch, step) with linear warm-up."""
    t = epoch + step / max(1, steps_per_epoch)
    factor = SCHEDULES[spec.name](spec, t)
    if spec.warmup_epochs and t < spec.warmup_epochs:
        factor *= (t + 1.0 / max(1, steps_per_epoch)) / spec.warmup_epochs
    return factor
