"""The one training engine: loop, checkpoints, metrics, logging, and the recipe-to-run-folder driver.

The names below are imported on first use, so that leaf modules of the engine (checkpoints, devices, batch)
can be imported by ``kdlab.teachers`` without importing the driver that builds teachers."""

from typing import Any

__all__ = ["Trainer", "distill_step", "load_teacher", "resume_run", "run_recipe"]

_WHERE = {
    "Trainer": "kdlab.engine.trainer",
    "distill_step": "kdlab.engine.step",
    "load_teacher": "kdlab.engine.run",
    "resume_run": "kdlab.engine.run",
    "run_recipe": "kdlab.engine.run",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'kdlab.engine' has no attribute {name!r}")
