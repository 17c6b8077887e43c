"""The one training engine: loop, checkpoints, metrics, logging, and the recipe-to-run-folder driver."""

from kdlab.engine.run import load_teacher, resume_run, run_recipe
from kdlab.engine.trainer import Trainer

__all__ = ["Trainer", "load_teacher", "resume_run", "run_recipe"]
