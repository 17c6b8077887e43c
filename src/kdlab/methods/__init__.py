"""Distillation terms (methods). Each module registers its terms in ``kdlab.registry.TERMS``."""

from kdlab.methods import logits  # noqa: F401
from kdlab.methods import features  # noqa: F401
from kdlab.methods import mutual  # noqa: F401
from kdlab.methods import boundary  # noqa: F401
from kdlab.methods import review  # noqa: F401
from kdlab.methods import relations  # noqa: F401
from kdlab.methods import contrastive  # noqa: F401
from kdlab.methods import letkd  # noqa: F401
from kdlab.methods.base import FitData, Objective, SetupInfo, StepContext, Taps, Term, TermParams

__all__ = ["FitData", "Objective", "SetupInfo", "StepContext", "Taps", "Term", "TermParams"]
