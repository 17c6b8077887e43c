"""kdlab: knowledge distillation as a general training paradigm."""

__version__ = "0.1.0"
