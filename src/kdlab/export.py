"""Export a run's student: bare weights in safetensors with the model spec in the metadata, so the
student can be rebuilt with ``kdlab.models.build_model`` alone (no teacher, no connectors, no kdlab
training code)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from kdlab.engine.checkpoint import save_weights
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe


def export_run(run_dir: str | Path, out: str | Path, weights: str = "final") -> Path:
    run_dir, out = Path(run_dir), Path(out)
    src = run_dir / ("best.safetensors" if weights == "best" else "student.safetensors")
    if not src.exists():
        raise KDLabError(f"{src} not found: is {run_dir} a finished kdlab run?")
    recipe = load_recipe(run_dir / "recipe.yaml")
    meta = {"kdlab.model": json.dumps({"name": recipe.student.name, "kwargs": recipe.student.kwargs}),
            "kdlab.dataset": recipe.data.name, "kdlab.source": str(run_dir)}
    save_weights(out, load_file(str(src)), metadata=meta)
    return out
