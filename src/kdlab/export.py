"""Export a run's student: bare weights in safetensors, with what is needed to rebuild it in the metadata
(model spec including inserted layers such as letKD's, class count, input shape). The teacher, connectors,
templates and every other training-only piece are left behind; ``load_exported`` rebuilds the student
with the model zoo alone."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from kdlab.engine.checkpoint import save_weights
from kdlab.errors import KDLabError
from kdlab.recipe import ModelSpec, load_recipe


def export_run(run_dir: str | Path, out: str | Path, weights: str = "final") -> Path:
    from kdlab.engine.run import build_data

    run_dir, out = Path(run_dir), Path(out)
    src = run_dir / ("best.safetensors" if weights == "best" else "student.safetensors")
    if not src.exists():
        raise KDLabError(f"{src} not found: is {run_dir} a finished kdlab run?")
    recipe = load_recipe(run_dir / "recipe.yaml")
    ds = build_data(recipe)
    meta = {"kdlab.model": recipe.student.model_dump_json(), "kdlab.num_classes": str(ds.num_classes),
            "kdlab.input_shape": json.dumps(list(ds.input_shape)), "kdlab.mean": json.dumps(list(ds.mean)),
            "kdlab.std": json.dumps(list(ds.std)), "kdlab.dataset": recipe.data.name, "kdlab.source": str(run_dir)}
    save_weights(out, load_file(str(src)), metadata=meta)
    return out


def load_exported(path: str | Path) -> nn.Module:
    """The exported student, in eval mode (inputs normalised with the ``kdlab.mean``/``kdlab.std`` metadata)."""
    from kdlab.layers import insert_layers
    from kdlab.models import build_model

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    spec = ModelSpec.model_validate_json(meta["kdlab.model"])
    shape, classes = tuple(json.loads(meta["kdlab.input_shape"])), int(meta["kdlab.num_classes"])
    model = build_model(spec.name, num_classes=classes, input_shape=shape, **spec.kwargs)
    if spec.insert:
        insert_layers(model, spec.insert, input_shape=shape, num_classes=classes)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
