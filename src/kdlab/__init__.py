"""kdlab: knowledge distillation as a general training paradigm."""

__version__ = "0.1.0"

__all__ = ["distill"]


def __getattr__(name: str):  # noqa: ANN202 - lazy, so `import kdlab` stays cheap (no torch import)
    if name == "distill":  # kdlab.distill(teacher, student, train=(X, y), test=(X, y), method="kd", ...)
        from kdlab.api import distill

        return distill
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
