"""Distillation terms (methods). Each module registers its terms in ``kdlab.registry.TERMS``."""

from kdlab.methods import logits  # noqa: F401
from kdlab.methods.base import Objective, SetupInfo, StepContext, Taps, Term, TermParams

__all__ = ["Objective", "SetupInfo", "StepContext", "Taps", "Term", "TermParams"]
