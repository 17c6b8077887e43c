"""Stages of a recipe and the seeds of each epoch.

A recipe without ``stages:`` is one stage; a multi-stage recipe (a FitNet hint stage, then KD) gets its unset
blocks from the top level. Every epoch reseeds every RNG from (seed, global epoch), which is what makes a run
resumed from an epoch-end checkpoint replay the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from kdlab.recipe import OptimSpec, Recipe, ScheduleSpec, TermSpec


@dataclass
class Stage:
    name: str
    objective: dict[str, TermSpec]
    optim: OptimSpec
    schedule: ScheduleSpec
    trainable: list[str] | None

    @property
    def epochs(self) -> int:
        return self.schedule.total_epochs


def plan_stages(recipe: Recipe) -> list[Stage]:
    """The recipe's stages with inherited blocks filled in (a recipe without ``stages:`` is one stage)."""
    if not recipe.stages:
        return [Stage("main", recipe.objective, recipe.optim, recipe.schedule, None)]
    out = []
    for s in recipe.stages:
        sched = s.schedule or recipe.schedule
        if s.epochs is not None:
            sched = sched.model_copy(update={"epochs": s.epochs})
        out.append(Stage(s.name, s.objective or recipe.objective, s.optim or recipe.optim, sched, s.trainable))
    return out


def epoch_seed(seed: int, global_epoch: int) -> int:
    return (seed * 1_000_003 + global_epoch * 7_919 + 17) % (2**63 - 1)


def reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
