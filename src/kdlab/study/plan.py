"""Planning a study: the grid expanded into teacher and student runs, each with its full recipe.

Deterministic: the same study file gives the same runs, folders and teacher hashes.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdlab.errors import KDLabError
from kdlab.recipe import apply_overrides, deep_merge, load_recipe, merge_files, read_file
from kdlab.study.schema import Study

# DataSpec keys that are training settings, not the identity of the data; every other data key (name, kwargs,
# corruption, val_fraction, ...) is copied from the student to the teacher when ``teacher.same_data``.
TRAINING_DATA_KEYS = {"batch_size", "eval_batch_size", "augment", "resident", "num_workers", "drop_last"}


@dataclass
class PlannedRun:
    """One run of a study: where it goes, its seed and full recipe, and how it relates to the grid."""

    kind: Literal["teacher", "student"]
    run_dir: str
    seed: int
    recipe: dict[str, Any]
    method: str | None = None
    cell: dict[str, str] = field(default_factory=dict)  # axis -> value label
    teacher_dir: str | None = None
    teacher_weights: str | None = None
    teacher_clean: bool | None = None
    used_by: list[str] = field(default_factory=list)  # teachers: the cells that use it

    @property
    def cell_label(self) -> str:
        return cell_label(self.cell)

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("recipe")
        return d


def cell_label(cell: dict[str, str]) -> str:
    return ", ".join(f"{a}={v}" for a, v in cell.items()) or "all"


def safe_name(text: str) -> str:
    """A folder-safe spelling of an axis or value label."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(text))


def cell_path(cell: dict[str, str]) -> Path:
    return Path(*[f"{safe_name(a)}-{safe_name(v)}" for a, v in cell.items()]) if cell else Path()


def _apply(data: dict[str, Any], overrides: Sequence[str], where: str) -> dict[str, Any]:
    try:
        return apply_overrides(data, list(overrides))
    except KDLabError as e:
        raise KDLabError(f"{where}: {e}") from None


def _for_run(overrides: Sequence[str], data: dict[str, Any]) -> list[str]:
    """A run without a teacher (``teacher: null``, e.g. DML) ignores ``teacher.*`` overrides of the grid."""
    if data.get("teacher") is not None:
        return list(overrides)
    return [o for o in overrides if not o.strip().startswith("teacher.")]


def _digest(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _pin_corruption_seed(data: dict[str, Any], seed: int | None) -> None:
    corr = (data.get("data") or {}).get("corruption")
    if seed is not None and isinstance(corr, dict) and corr.get("seed") is None:
        corr["seed"] = seed


def _validate(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a run recipe now (so typos fail before anything trains); returns it unchanged."""
    try:
        load_recipe(data)
    except KDLabError as e:
        raise KDLabError(f"{where}: {str(e).removeprefix('recipe: ')}") from None
    return data


def plan_study(study: Study, *, out: str | Path | None = None, validate: bool = True) -> list[PlannedRun]:
    """Expand a study into its runs: teachers first (distinct recipes, first-use order), then students in
    (cell, method, seed) order, cells in the product order of the axes as written. Deterministic."""
    out_dir = Path(out if out is not None else study.out)
    axes = list(study.grid.items())
    cells = [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[list(v) for _, v in axes])]
    base = merge_files(study.base)
    method_data = {}
    for label, m in study.methods.items():
        d = deep_merge(base, merge_files(m.file))
        d = deep_merge(d, m.recipe)
        method_data[label] = _apply(d, m.overrides, f"method {label}")
    teacher_base = None
    if study.teacher is not None:
        teacher_base = _apply(merge_files(study.teacher.recipe), study.teacher.overrides, "teacher.overrides")

    teachers: dict[str, PlannedRun] = {}
    students: list[PlannedRun] = []
    lazy: dict[str, PlannedRun] = {}
    for cell in cells:
        values = [study.grid[a][v] for a, v in cell.items()]
        where_cell = cell_label(cell)
        for label in study.methods:
            for seed in study.seeds:
                where = f"method {label}, cell {where_cell}, seed {seed}"
                d = copy.deepcopy(method_data[label])
                uses_teacher = study.teacher is not None and not ("teacher" in d and d["teacher"] is None)
                if uses_teacher:
                    old = d.get("teacher")
                    if isinstance(old, list):
                        raise KDLabError(
                            f"{where}: studies make one teacher per cell; this recipe lists "
                            f"{len(old)} teachers (drop the study's `teacher:` block to keep them)"
                        )
                    keep = {k: v for k, v in (old or {}).items() if k not in ("run", "recipe", "model", "checkpoint")}
                    d["teacher"] = {**keep, "run": "<study teacher>", "recipe": None, "weights": study.teacher.weights}
                d = _apply(d, _for_run(study.overrides, d), f"{where}: study overrides")
                for val in values:
                    d = _apply(d, _for_run(val.all + val.runs + val.methods.get(label, []), d), where)
                d["name"], d["out"], d["seed"] = label, str(out_dir / cell_path(cell)), seed
                _pin_corruption_seed(d, study.corruption_seed)
                run = PlannedRun(
                    "student",
                    str(out_dir / cell_path(cell) / label / f"seed{seed}"),
                    seed,
                    d,
                    method=label,
                    cell=dict(cell),
                )
                if uses_teacher:
                    assert study.teacher is not None and teacher_base is not None
                    tseed = seed if study.teacher.per_seed else study.teacher.seed
                    t = _apply(
                        copy.deepcopy(teacher_base),
                        _for_run(study.overrides, teacher_base),
                        f"teacher of {where}: study overrides",
                    )  # teacher.* are for the students
                    for val in values:
                        t = _apply(t, val.all + val.teacher, f"teacher of {where}")
                    if study.teacher.same_data:
                        own = {k: v for k, v in (t.get("data") or {}).items() if k in TRAINING_DATA_KEYS}
                        shared = {k: v for k, v in (d.get("data") or {}).items() if k not in TRAINING_DATA_KEYS}
                        t["data"] = copy.deepcopy({**own, **shared})
                    else:
                        _pin_corruption_seed(t, study.corruption_seed)
                    if study.teacher.clean and isinstance(t.get("data"), dict):
                        t["data"].pop("corruption", None)
                    t.pop("name", None)
                    t.pop("out", None)
                    t["seed"] = tseed
                    key = _digest(t)
                    t["name"], t["out"] = key, str(out_dir / "teachers")
                    tdir = str(out_dir / "teachers" / key / f"seed{tseed}")
                    if tdir not in teachers:
                        teachers[tdir] = PlannedRun("teacher", tdir, tseed, t, teacher_clean=study.teacher.clean)
                    if where_cell not in teachers[tdir].used_by:
                        teachers[tdir].used_by.append(where_cell)
                    run_weights = d["teacher"].get("weights", "final")
                    tdata = teachers[tdir].recipe.get("data") or {}
                    if run_weights == "best" and not tdata.get("val_fraction"):
                        raise KDLabError(
                            f"{where}: teacher.weights best early-stops the teacher on a validation "
                            "split; set data.val_fraction (e.g. in the study's overrides), so that "
                            "the test set never selects the teacher"
                        )
                    d["teacher"]["run"] = tdir
                    run.teacher_dir = tdir
                    run.teacher_weights = d["teacher"].get("weights", "final")
                    run.teacher_clean = study.teacher.clean
                elif isinstance(d.get("teacher"), dict) and d["teacher"].get("run") and d["teacher"].get("recipe"):
                    # the recipe's own lazily trained teacher: train it up front (once) so workers never race
                    tdir = str(d["teacher"]["run"])
                    if tdir not in lazy:
                        tr = read_file(d["teacher"]["recipe"])
                        lazy[tdir] = PlannedRun("teacher", tdir, int(tr.get("seed", 0)), tr)
                    run.teacher_dir, run.teacher_weights = tdir, d["teacher"].get("weights", "final")
                students.append(run)
    runs = [*teachers.values(), *lazy.values(), *students]
    if validate:
        for r in runs:
            what = (
                f"teacher {r.run_dir} (used by {'; '.join(r.used_by)})"
                if r.kind == "teacher"
                else f"method {r.method}, cell {r.cell_label}, seed {r.seed}"
            )
            _validate(r.recipe, what)
    return runs
