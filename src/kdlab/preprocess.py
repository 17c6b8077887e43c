"""What a trained student needs to be used later, without the training data or the training directory.

``preprocess.json`` is written atomically into every run folder at the start of the run and copied into the
metadata of every export: the student's model spec, class count and names, the per-sample input shape and
dtype, the normalisation (mean/std, applied per channel after scaling raw inputs to the training range),
how image files become inputs (channels, size, resize rule, pixels / 255) and, for text students, the
tokenizer and ``max_length``. ``kdlab predict``, ``kdlab eval`` and ``kdlab export`` read only this.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from kdlab.errors import KDLabError
from kdlab.recipe import ModelSpec, load_recipe
from kdlab.registry import DATASETS, import_plugins
from kdlab.runfiles import PREPROCESS, RECIPE

VERSION = 1


def _dataset_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The dataset builder's keyword arguments with its defaults filled in (e.g. ``max_length``)."""
    out: dict[str, Any] = {}
    try:
        sig = inspect.signature(DATASETS.get(name))
        out = {p.name: p.default for p in sig.parameters.values() if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError, KDLabError):
        pass
    return {**out, **kwargs}


def _text(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Tokenizer (absolute local path) and max_length for datasets that tokenise text."""
    if "tokenizer" not in kwargs or "max_length" not in kwargs:
        return None
    tok = kwargs["tokenizer"]
    if tok is None:
        from kdlab.data.text import minilm_path  # deferred: torch (this module is read without it)

        try:
            tok = minilm_path()
        except KDLabError:
            tok = None
    return {"tokenizer": None if tok is None else str(Path(tok).resolve()), "max_length": int(kwargs["max_length"])}


def describe(recipe: Any, dataset: Any) -> dict[str, Any]:
    """The preprocessing record of a run: pure data, JSON-serialisable."""
    shape = [int(s) for s in dataset.input_shape]
    x = dataset.train.x
    floating = bool(getattr(x, "is_floating_point", lambda: True)())
    kwargs = _dataset_kwargs(recipe.data.name, dict(recipe.data.kwargs))
    rec: dict[str, Any] = {
        "version": VERSION,
        "dataset": recipe.data.name,
        "student": recipe.student.model_dump(mode="json"),
        "plugins": list(getattr(recipe, "plugins", [])),  # modules that register the student's names
        "num_classes": int(dataset.num_classes),
        "classes": [str(c) for c in dataset.classes] or [str(i) for i in range(dataset.num_classes)],
        "input_shape": shape,
        "input_dtype": "float32" if floating else "int64",
        "mean": [float(v) for v in dataset.mean],
        "std": [float(v) for v in dataset.std],
    }
    if floating and len(shape) == 3:  # images: how a file on disk becomes a C×H×W tensor in [0, 1]
        rec["image"] = {"channels": shape[0], "size": shape[1:], "resize": str(kwargs.get("resize", "square"))}
    text = None if floating else _text(kwargs)
    if text is not None:
        rec["text"] = text
    return rec


def write(run_dir: str | Path, record: dict[str, Any]) -> Path:
    from kdlab.engine.checkpoint import atomic_write  # deferred: torch (this module is read without it)

    path = Path(run_dir) / PREPROCESS
    text = json.dumps(record, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_for_run(run_dir: str | Path, recipe: Any, dataset: Any) -> Path:
    return write(run_dir, describe(recipe, dataset))


def read(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's record; runs from before ``preprocess.json`` existed rebuild it from their data once."""
    run_dir = Path(run_dir)
    path = run_dir / PREPROCESS
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise KDLabError(
                f"{path} is unreadable ({e}); rerun `kdlab run --resume {run_dir}` to rewrite it"
            ) from None
    if not (run_dir / RECIPE).exists():
        raise KDLabError(f"{run_dir} is not a kdlab run folder (no {PREPROCESS} or recipe.yaml)")
    from kdlab.engine.run import build_data  # deferred: the driver imports this module

    recipe = load_recipe(run_dir / RECIPE)
    record = describe(recipe, build_data(recipe))
    try:
        write(run_dir, record)  # an older run: rebuild once, then never need the data again
    except OSError:
        pass
    return record


def build_student(record: dict[str, Any]) -> Any:
    """The student network (untrained) that the record describes, with its inserted layers."""
    from kdlab.build import build_network  # deferred: torch and every model (this module is read without them)

    import_plugins(record.get("plugins"))  # a plugin-registered student name resolves only after its import
    spec = ModelSpec.model_validate(record["student"])
    return build_network(spec, int(record["num_classes"]), record["input_shape"], initial_weights=False)


__all__ = ["PREPROCESS", "build_student", "describe", "read", "write", "write_for_run"]
