"""Distillation terms (methods). Each module registers its terms in ``kdlab.registry.TERMS``."""

from kdlab.methods import (
    boundary,  # noqa: F401
    contrastive,  # noqa: F401
    features,  # noqa: F401
    letkd,  # noqa: F401
    logits,  # noqa: F401
    mutual,  # noqa: F401
    relations,  # noqa: F401
    review,  # noqa: F401
)
from kdlab.methods.base import FitData, Objective, SetupInfo, StepContext, Taps, Term, TermParams

__all__ = ["FitData", "Objective", "SetupInfo", "StepContext", "Taps", "Term", "TermParams"]
