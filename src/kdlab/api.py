"""``kdlab.distill``: distillation from Python without writing a recipe.

The modules and data given in memory are registered for this process under generated names
(``inmemory.data-<content hash>``, ``inmemory.<run name>.student``/``.teacher``), turned into an ordinary
recipe and trained by the same engine into an ordinary run folder (metrics, checkpoints, summary, export).
Those names exist only in the process that registered them, so such a run resumes only from Python (call
``distill`` again with the same arguments), never with ``kdlab run --resume``. The data's hash is part of the
recipe, so other data never reuses a finished run; other modules under the same run name do (``force=True``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
import yaml
from torch import nn

from kdlab.data.arrays import from_arrays
from kdlab.engine.checkpoint import fit_weights, read_weights
from kdlab.engine.run import run_recipe
from kdlab.errors import KDLabError
from kdlab.recipe import _set_path, deep_merge, read_file, validate
from kdlab.registry import DATASETS, MODELS, TERMS
from kdlab.runfiles import FINAL_WEIGHTS, RECIPE
from kdlab.shipped import recipes_dir


def _as_xy(data: Any, what: str) -> tuple[Any, Any]:
    """``(X, y)`` arrays/tensors, or a map-style dataset of ``(x, y)`` pairs (stacked, so it must fit in memory)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items or not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items):
            raise KDLabError(f"{what}: a dataset must yield (x, y) pairs")
        xs = torch.stack([torch.as_tensor(it[0]) for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items])
        return xs, ys
    raise KDLabError(f"{what}: expected (X, y) arrays/tensors or a dataset of (x, y) pairs; got {type(data).__name__}")


def _fingerprint(dataset: Any) -> str:
    """A short hash of the data (inputs, labels, normalisation): the recipe names what it trained on."""
    h = hashlib.sha1()
    for t in (dataset.train.x, dataset.train.y, dataset.test.x, dataset.test.y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((dataset.mean, dataset.std)).encode())
    return h.hexdigest()[:12]


def _register_model(module: nn.Module, role: str, run: str) -> str:
    if not isinstance(module, nn.Module):
        raise KDLabError(f"{role}: expected a torch.nn.Module; got {type(module).__name__}")
    name = f"inmemory.{run}.{role}"

    def build(**_: Any) -> nn.Module:  # the given module itself: kdlab trains it in place
        return module

    MODELS.add(name, build, description=f"{type(module).__name__} given to kdlab.distill ({role})", replace=True)
    return name


def method_recipe(method: str) -> dict[str, Any]:
    """The shipped ``recipes/methods/<method>.yaml`` (paper defaults), else ``{ce: 0.1, <method>: {}}``."""
    try:
        path = recipes_dir() / "methods" / f"{method}.yaml"
    except KDLabError:
        path = None
    if path is not None and path.exists():
        data = read_file(path)
        data.pop("name", None)
        return data
    TERMS.entry(method)  # unknown methods: the registry's "did you mean" error
    return {"objective": {"ce": {"weight": 0.1}, method: {}}}


def distill(
    teacher: nn.Module | None,
    student: nn.Module,
    train: Any,
    test: Any = None,
    *,
    method: str = "kd",
    epochs: int = 30,
    out: str = "runs/distill",
    name: str | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
    mean: Any = "none",
    std: Any = "none",
    force: bool = False,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Distil ``teacher`` (frozen, used as given) into ``student`` (trained in place) and return
    ``(student, summary)``.

    ``train``/``test``: ``(X, y)`` (numpy arrays or tensors; images N×C×H×W or vectors N×D, as for the ``arrays``
    dataset) or map-style datasets of ``(x, y)``; without ``test``, ``test_fraction`` (default 0.2) is held out.
    Inputs reach both models as given (``mean``/``std`` default to ``"none"``: the teacher was trained on these
    inputs and the returned student takes them too); ``"auto"`` or numbers normalise, as for ``arrays``.
    ``method``: a method name; the shipped method recipe gives its paper defaults. ``overrides``: recipe keys,
    as mappings (``optim={"lr": 0.01}``) or dotted paths (``**{"objective.kd.tau": 2}``). ``teacher=None`` with
    ``method="ce"`` is plain training. The run folder is ``out/name/seed{seed}`` (``name`` defaults to the method).
    """
    run = name or method
    xtr, ytr = _as_xy(train, "train")
    xte, yte = _as_xy(test, "test") if test is not None else (None, None)
    if test is None and test_fraction is None:
        test_fraction = 0.2
    dataset = from_arrays(
        xtr,
        ytr,
        xte,
        yte,
        test_fraction=test_fraction if test is None else None,
        mean=mean,
        std=std,
        source="kdlab.distill",
    )
    data_name = f"inmemory.data-{_fingerprint(dataset)}"
    dataset.name = data_name
    DATASETS.add(data_name, lambda: dataset, description="arrays given to kdlab.distill", replace=True)
    data: dict[str, Any] = deep_merge(
        method_recipe(method),
        {
            "name": run,
            "seed": seed,
            "out": out,
            "data": {"name": data_name},
            "student": {"name": _register_model(student, "student", run)},
            "schedule": {"epochs": epochs, "milestones": [round(epochs * 0.5), round(epochs * 0.75)]},
        },
    )
    if teacher is not None:
        data["teacher"] = {"model": {"name": _register_model(teacher, "teacher", run)}}
    elif method != "ce":
        raise KDLabError(f"method {method!r} needs a teacher; pass teacher=None only with method='ce'")
    for key, value in overrides.items():
        if "." in key:
            _set_path(data, key.split("."), value)
        elif isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data = deep_merge(data, {key: dict(value)})
        else:
            data[key] = value
    recipe = validate(data, "kdlab.distill")
    run_dir = recipe.run_dir()
    saved = run_dir / RECIPE
    if not force and saved.exists() and yaml.safe_load(saved.read_text()) != recipe.to_dict():
        raise KDLabError(
            f"{run_dir} holds another run (other data, models or settings); pass force=True to "
            "replace it, or another name/out"
        )
    summary = run_recipe(recipe, existing="overwrite" if force else "resume")
    fit_weights(student, read_weights(run_dir / FINAL_WEIGHTS), run_dir / FINAL_WEIGHTS)
    return student.eval(), summary
