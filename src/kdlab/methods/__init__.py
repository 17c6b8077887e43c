"""Distillation terms (methods). Each module registers its terms in ``kdlab.registry.TERMS``."""
