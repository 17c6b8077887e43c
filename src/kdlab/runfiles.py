"""The names of the files in a run folder and a study folder, spelled once.

Every module that reads or writes a run folder uses these names, so renaming a file (or finding every
reader of it) is one edit. A leaf module: it imports nothing of kdlab.
"""

from __future__ import annotations

import json
from pathlib import Path

RECIPE = "recipe.yaml"  # the resolved recipe, written first (a run killed later can be resumed)
ENV = "env.json"  # versions, git commit, device, command of every (re)start
METRICS = "metrics.jsonl"  # one line per epoch
CHECKPOINT = "checkpoint.safetensors"  # the resume point
FINAL_WEIGHTS = "student.safetensors"  # bare student weights after the last epoch
BEST_WEIGHTS = "best.safetensors"  # bare student weights of the best epoch
WEIGHTS = {"final": FINAL_WEIGHTS, "best": BEST_WEIGHTS}  # `weights: final | best` -> file
PREPROCESS = "preprocess.json"  # what predict/eval/export need to read inputs as training did
SUMMARY = "summary.json"  # final and best metrics; written last, so its presence marks a run that ended
STUDY_META = "study.json"  # a study's run: method, grid cell, seed, teacher folder
STUDY_PLAN = "plan.json"  # a study folder: the study and every planned run


def is_finished(run_dir: str | Path) -> bool:
    """True when the run folder's summary says ``status: finished`` (unreadable summaries are not finished)."""
    p = Path(run_dir) / SUMMARY
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
