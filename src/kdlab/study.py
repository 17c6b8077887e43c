"""Studies: a grid of (method x grid cell x seed) runs with their teachers, then paper-style tables and plots.

``kdlab study STUDY.yaml`` calls :func:`run_study`; ``kdlab study STUDY.yaml --report`` calls
:func:`study_report`. A study file (YAML or TOML; relative recipe paths are relative to the study file,
``out`` is relative to the working directory like a recipe's ``out``)::

    name: nine_methods_noise              # default: the file's stem
    out: runs/studies/nine_methods_noise
    base: [../digits/pair.yaml]           # recipe files merged left to right, under every student run
    methods:                              # label -> method recipe file(s) and/or inline settings
      ce: ../methods/ce.yaml
      kd: ../methods/kd.yaml
      kd_t8: {file: ../methods/kd.yaml, overrides: [objective.kd.tau=8]}
      dml: {file: ../methods/dml.yaml, overrides: [cohort.0.name=smallcnn, "cohort.0.kwargs={width: 2.0}"]}
    grid:                                 # axis -> value label -> overrides (a list, or a mapping, below)
      noise:
        "0.0": [data.corruption.noise.rate=0.0]
        "0.2": [data.corruption.noise.rate=0.2]
      teacher_stop:
        best: [teacher.weights=best]
        final: [teacher.weights=final]
    seeds: [0, 1, 2]                      # or 3 (= 0,1,2) or "0-2"
    overrides: [train.tensorboard=false]  # every run, teachers included
    teacher:                              # how the teacher of each grid cell is made
      recipe: ../digits/teacher.yaml      # file(s), merged left to right
      overrides: []
      weights: best                       # final | best (best = early-stopped on data.val_fraction)
      clean: false                        # true: the teacher trains without data.corruption
      same_data: true                     # the teacher's dataset block is the student's (name, kwargs,
                                          # corruption, val_fraction, ...); false: the teacher recipe's own
      seed: 0
      per_seed: false                     # true: one teacher per seed (seed k teaches seed k)
    corruption_seed: 0                    # pins data.corruption.seed when unset (null: the run's seed)
    baseline: ce                          # the "standard training" row of the gain table

A grid value is a list of ``key=value`` overrides for the student runs, or a mapping with any of
``runs:`` (student runs), ``teacher:`` (the teacher recipe), ``all:`` (both), ``methods: {label: [...]}``
(student runs of one method only, e.g. DML's cohort peer = the cell's teacher architecture), and ``x:`` (the
number plotted for this value; by default the value label read as a number).

**Order** of a student run's recipe: base files, method files, method ``recipe:``, method ``overrides``, the
study's teacher link (``teacher: {run: <teacher folder>, weights: <teacher.weights>}``), study ``overrides``,
then each axis's cell overrides (``all``, ``runs``, ``methods[label]``) in axis order; then ``name`` (the
method label), ``out``, ``seed`` and the teacher folder are set by the study. A teacher recipe: teacher files,
``teacher.overrides``, study ``overrides``, each axis's ``all`` and ``teacher``, then (``same_data``) the
student's dataset block, without ``corruption`` when ``clean``.

**Folders.** Student runs: ``out/<axis>-<value>/.../<method>/seed<k>``. Teachers: one per distinct teacher
recipe (the merged recipe, hashed) and seed ``teacher.seed`` (0), ``out/teachers/<hash>/seed0``, so cells
and methods whose teachers are identical share one; each teacher trains before any student. A run whose
recipe says ``teacher: null`` (DML) gets no teacher and
ignores ``teacher.*`` overrides. Every run folder gets ``study.json`` (method, cell,
seed, teacher folder, ``teacher_weights``, ``teacher_clean``); ``out/plan.json`` lists them all.

**Resume.** A finished run is returned as is by the engine (``run_recipe`` with ``existing="resume"``), an
interrupted one resumes from its checkpoint, so re-running a killed study redoes nothing that finished.
A failed run is reported at the end (KDLabError) after every other run has been attempted; students whose
teacher failed are skipped.

**Parallel.** ``workers > 1`` runs each phase (teachers, then students) in a ``ProcessPoolExecutor`` with
the spawn start method; every worker uses one torch thread (``KDLAB_THREADS=1``).

**Report** (``out/report/``): the final (last-epoch) test top-1, mean ± sample std over seeds, as a table with
methods as rows and grid cells as columns, the gain over ``baseline`` in percentage points, the teachers'
top-1, as ``report.md`` plus ``top1.csv``, ``gain.csv`` (wide, in %/pp), ``cells.csv`` (long, fractions),
``runs.csv`` (one row per run); PNGs: top-1 against every numeric axis (one line per method, one plot per
combination of the other axes' values) and, when cells have different teachers, the capacity-gap curves
(student top-1 against teacher top-1 and against teacher parameter count).
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from kdlab.engine.progress import silenced
from kdlab.engine.run import run_recipe
from kdlab.errors import KDLabError
from kdlab.recipe import Strict, _format_error, apply_overrides, deep_merge, load_recipe, merge_files, read_file

SUMMARY = "summary.json"
STUDY_META = "study.json"
METRIC = ("final", "test/top1")  # the headline number: last-epoch test top-1 (never best-epoch, see seeds doc)
# DataSpec keys that are training settings, not the identity of the data; every other data key (name, kwargs,
# corruption, val_fraction, ...) is copied from the student to the teacher when ``teacher.same_data``.
TRAINING_DATA_KEYS = {"batch_size", "eval_batch_size", "augment", "resident", "num_workers", "drop_last"}


# --------------------------------------------------------------------------------------------- schema
def _str_list(v: Any) -> Any:
    if v is None:
        return []
    return [v] if isinstance(v, str) else v


class MethodEntry(Strict):
    """One method of a study: recipe file(s), an inline recipe fragment, and overrides."""

    file: list[str] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"file": [data]}
        if isinstance(data, list):  # files and key=value overrides, told apart by "="
            return {"file": [d for d in data if "=" not in str(d)], "overrides": [d for d in data if "=" in str(d)]}
        return data

    _files = field_validator("file", "overrides", mode="before")(lambda cls, v: _str_list(v))


class CellValue(Strict):
    """The overrides of one value of one grid axis."""

    runs: list[str] = Field(default_factory=list)
    teacher: list[str] = Field(default_factory=list)
    all: list[str] = Field(default_factory=list)
    methods: dict[str, list[str]] = Field(default_factory=dict)
    x: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, (list, str)):
            return {"runs": _str_list(data)}
        return data

    _lists = field_validator("runs", "teacher", "all", mode="before")(lambda cls, v: _str_list(v))


class TeacherPlan(Strict):
    """How the teacher of every grid cell is trained (one per distinct recipe)."""

    recipe: list[str]
    overrides: list[str] = Field(default_factory=list)
    weights: Literal["final", "best"] = "final"
    clean: bool = False
    same_data: bool = True
    seed: int = 0
    per_seed: bool = False

    _lists = field_validator("recipe", "overrides", mode="before")(lambda cls, v: _str_list(v))


class Study(Strict):
    name: str = "study"
    out: str
    base: list[str] = Field(default_factory=list)
    methods: dict[str, MethodEntry]
    grid: dict[str, dict[str, CellValue]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    overrides: list[str] = Field(default_factory=list)
    teacher: TeacherPlan | None = None
    corruption_seed: int | None = 0
    baseline: str | None = "ce"

    _lists = field_validator("base", "overrides", mode="before")(lambda cls, v: _str_list(v))

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("seeds must be a list of integers, a count, or 'lo-hi'")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("a seed count must be >= 1")
            return list(range(v))
        if isinstance(v, str):
            m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", v)
            if m:
                return list(range(int(m.group(1)), int(m.group(2)) + 1))
            return [int(s) for s in v.split(",") if s.strip()]
        return v

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, dict):
            for axis, values in v.items():
                if not isinstance(values, dict) or not values:
                    raise ValueError(f"grid axis {axis!r} must map value labels to overrides")
            return {str(a): {str(k): val for k, val in vals.items()} for a, vals in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self) -> "Study":
        if not self.methods:
            raise ValueError("a study needs at least one method")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        for axis, values in self.grid.items():
            for value, cell in values.items():
                unknown = set(cell.methods) - set(self.methods)
                if unknown:
                    raise ValueError(f"grid.{axis}.{value}.methods names unknown methods {sorted(unknown)}; "
                                     f"known: {', '.join(self.methods)}")
        return self


def load_study(source: str | Path | dict[str, Any] | Study, *, root: str | Path | None = None) -> tuple[Study, Path]:
    """Validate a study; returns it with relative file paths resolved (against the study file's folder, or
    ``root``/the working directory for a dict) and the folder they were resolved against."""
    if isinstance(source, Study):
        return source, Path(root or ".")
    if isinstance(source, dict):
        data, where, folder = copy.deepcopy(source), "study", Path(root or ".")
    else:
        path = Path(source)
        if not path.is_file():
            raise KDLabError(f"study file not found: {path}")
        text = path.read_text()
        from kdlab.recipe import tomllib  # tomli on Python 3.10

        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise KDLabError(f"{path}: a study must be a mapping at top level")
        from kdlab.recipe import resolve_relative  # ./ and ../ values in inline recipe parts: this file's folder

        data = resolve_relative(data, path.resolve().parent)
        data.setdefault("name", path.stem)
        where, folder = str(path), path.parent
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise KDLabError(f"{where}: " + "; ".join(_format_error(err) for err in e.errors())) from None

    def rel(p: str) -> str:
        return str(p) if Path(p).is_absolute() else str(folder / p)

    study.base = [rel(p) for p in study.base]
    for m in study.methods.values():
        m.file = [rel(p) for p in m.file]
    if study.teacher is not None:
        study.teacher.recipe = [rel(p) for p in study.teacher.recipe]
    if study.baseline is not None and study.baseline not in study.methods:
        study.baseline = None  # no gain table; a study without `ce` is legal
    return study, folder


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class PlannedRun:
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


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(text))


def cell_path(cell: dict[str, str]) -> Path:
    return Path(*[f"{_safe(a)}-{_safe(v)}" for a, v in cell.items()]) if cell else Path()


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
                        raise KDLabError(f"{where}: studies make one teacher per cell; this recipe lists "
                                         f"{len(old)} teachers (drop the study's `teacher:` block to keep them)")
                    keep = {k: v for k, v in (old or {}).items() if k not in ("run", "recipe", "model", "checkpoint")}
                    d["teacher"] = {**keep, "run": "<study teacher>", "recipe": None, "weights": study.teacher.weights}
                d = _apply(d, _for_run(study.overrides, d), f"{where}: study overrides")
                for val in values:
                    d = _apply(d, _for_run(val.all + val.runs + val.methods.get(label, []), d), where)
                d["name"], d["out"], d["seed"] = label, str(out_dir / cell_path(cell)), seed
                _pin_corruption_seed(d, study.corruption_seed)
                run = PlannedRun("student", str(out_dir / cell_path(cell) / label / f"seed{seed}"), seed, d,
                                 method=label, cell=dict(cell))
                if uses_teacher:
                    assert study.teacher is not None and teacher_base is not None
                    tseed = seed if study.teacher.per_seed else study.teacher.seed
                    t = _apply(copy.deepcopy(teacher_base), _for_run(study.overrides, teacher_base),
                               f"teacher of {where}: study overrides")  # teacher.* are for the students
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
                        teachers[tdir] = PlannedRun("teacher", tdir, tseed, t,
                                                    teacher_clean=study.teacher.clean)
                    if where_cell not in teachers[tdir].used_by:
                        teachers[tdir].used_by.append(where_cell)
                    run_weights = d["teacher"].get("weights", "final")
                    tdata = teachers[tdir].recipe.get("data") or {}
                    if run_weights == "best" and not tdata.get("val_fraction"):
                        raise KDLabError(f"{where}: teacher.weights best early-stops the teacher on a validation "
                                         "split; set data.val_fraction (e.g. in the study's overrides), so that "
                                         "the test set never selects the teacher")
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
            what = f"teacher {r.run_dir} (used by {'; '.join(r.used_by)})" if r.kind == "teacher" else \
                f"method {r.method}, cell {r.cell_label}, seed {r.seed}"
            _validate(r.recipe, what)
    return runs


# ----------------------------------------------------------------------------------------------- running
def _finished(run_dir: str | Path) -> bool:
    p = Path(run_dir) / SUMMARY
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def _write_meta(run: dict[str, Any]) -> None:
    path = Path(run["run_dir"]) / STUDY_META
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, path)


def _execute(recipe: dict[str, Any], run_dir: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Train (or return, if finished) one planned run. Module level so spawned workers can unpickle it."""
    was_finished = _finished(run_dir)
    t0 = time.time()
    # wait=True: a run (or shared teacher) that another study process is training is waited for, then reused
    with silenced():  # the study prints one line per run; epoch lines of parallel workers would interleave
        summary = run_recipe(load_recipe(recipe), run_dir=run_dir, existing="resume", quiet=True, wait=True)
    _write_meta(meta)
    return {"run_dir": run_dir, "trained": not was_finished, "summary": summary, "wall_s": time.time() - t0}


def _init_worker() -> None:
    os.environ["KDLAB_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _describe(r: PlannedRun) -> str:
    if r.kind == "teacher":
        return f"teacher {Path(r.run_dir).parent.name} seed {r.seed}"
    return f"{r.method} [{r.cell_label}] seed {r.seed}"


def _run_phase(runs: list[PlannedRun], workers: int | None, log: Callable[[str], None],
               done: dict[str, dict[str, Any]], failed: dict[str, str], counter: list[int], total: int) -> None:
    todo = []
    for r in runs:
        if r.teacher_dir is not None and r.teacher_dir in failed:
            failed[r.run_dir] = f"skipped: its teacher {r.teacher_dir} failed"
            continue
        todo.append(r)

    def finish(r: PlannedRun, res: dict[str, Any] | None, err: BaseException | None) -> None:
        counter[0] += 1
        if err is not None:
            failed[r.run_dir] = f"{type(err).__name__}: {err}"
            log(f"[{counter[0]}/{total}] FAILED {_describe(r)}: {failed[r.run_dir]}")
            return
        assert res is not None
        done[r.run_dir] = res
        top1 = (res["summary"].get("final") or {}).get("test/top1")
        acc = f"top-1 last {100 * top1:.2f}" if top1 is not None else "no test/top1"
        how = f"trained in {res['wall_s']:.1f} s" if res["trained"] else "already finished"
        log(f"[{counter[0]}/{total}] {_describe(r)}: {acc} ({how}) -> {r.run_dir}")

    if not workers or workers <= 1 or len(todo) <= 1:
        for r in todo:
            try:
                res = _execute(r.recipe, r.run_dir, r.meta())
            except Exception as e:  # noqa: BLE001 - one failed run must not stop the study
                finish(r, None, e)
            else:
                finish(r, res, None)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker) as ex:
        futures = {ex.submit(_execute, r.recipe, r.run_dir, r.meta()): r for r in todo}
        try:
            for fut in cf.as_completed(futures):
                r = futures[fut]
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001
                    finish(r, None, e)
                else:
                    finish(r, res, None)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _cache_phase(students: list[PlannedRun], log: Callable[[str], None], failed: dict[str, str]) -> float:
    """Build every teacher cache the student runs will read (``teacher.cache: auto``), once per teacher and
    grid cell, before the students start: workers then only read it. Returns the seconds spent."""
    from kdlab.teachers.load import prebuild_caches

    t0 = time.time()
    todo = [r for r in students if isinstance(r.recipe.get("teacher"), dict) and r.recipe["teacher"].get("cache")
            is not None and r.teacher_dir not in failed]
    for i, err in prebuild_caches([load_recipe(r.recipe) for r in todo], log).items():
        failed[todo[i].run_dir] = f"teacher cache: {err}"
    return time.time() - t0


def run_study(
    path: str | Path | dict[str, Any],
    workers: int | None = None,
    dry_run: bool = False,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    report: bool = True,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every run of a study (teachers, then students), skipping finished ones, then write the report.

    ``overrides`` are appended to the study's ``overrides`` (every run); ``out`` replaces its ``out``.
    Returns ``{"study", "out", "runs" (plan entries), "trained", "reused", "failed", "report"}``;
    ``dry_run`` only plans (and validates every recipe) and writes nothing. Raises KDLabError at the end
    when a run failed (after all other runs were attempted).
    """
    study, _ = load_study(path)
    if overrides:
        study.overrides = [*study.overrides, *overrides]
    out_dir = Path(out if out is not None else study.out)
    runs = plan_study(study, out=out_dir)
    log = log or (lambda s: None if quiet else print(s, flush=True))
    teachers = [r for r in runs if r.kind == "teacher"]
    students = [r for r in runs if r.kind == "student"]
    result: dict[str, Any] = {"study": study.name, "out": str(out_dir), "runs": [r.meta() for r in runs],
                              "teachers": len(teachers), "students": len(students)}
    if dry_run:
        ncells = len({r.cell_label for r in students})
        log(f"study {study.name}: {len(teachers)} teacher runs + {len(students)} student runs "
            f"({len(study.methods)} methods x {ncells} cells x {len(study.seeds)} seeds) -> {out_dir}")
        for r in runs:
            state = "finished" if _finished(r.run_dir) else "to run"
            log(f"  {r.kind:7s} {_describe(r)}: {r.run_dir} ({state})")
        return {**result, "dry_run": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(json.dumps({"study": study.model_dump(), "runs": result["runs"]}, indent=2))
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    counter = [0]
    total = len(runs)
    _run_phase(teachers, workers, log, done, failed, counter, total)
    result["cache_s"] = _cache_phase(students, log, failed)
    _run_phase(students, workers, log, done, failed, counter, total)
    result.update(trained=sum(r["trained"] for r in done.values()),
                  reused=sum(not r["trained"] for r in done.values()), failed=dict(failed))
    if failed:
        lines = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise KDLabError(f"study {study.name}: {len(failed)} of {total} runs failed: {lines}{more}; "
                         "fix and run the study again (finished runs are kept)")
    if report:
        result["report"] = study_report(study, out=out_dir)
        log(f"report: {Path(result['report']['files'][0])}")
    return result


# ------------------------------------------------------------------------------------------------ report
def _mean_std(vals: Sequence[float]) -> tuple[float, float] | None:
    if not vals:
        return None
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s


def _teacher_params(run_dir: str | Path) -> int | None:
    """Parameter count of a trained teacher from its saved weights (BatchNorm running statistics excluded)."""
    path = Path(run_dir) / "student.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    n = 0
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue
            n += math.prod(f.get_slice(k).get_shape())
    return n


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows(rows)
    return buf.getvalue()


def _md(headers: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    rule = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(map(esc, headers)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines) + "\n"


def study_report(
    study: str | Path | dict[str, Any] | Study,
    out: str | Path | None = None,
    *,
    report_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Tables and plots of a study's finished runs (unfinished ones are left out and counted in ``n``).

    Returns ``{"markdown", "cells" (one dict per method x cell), "runs" (one per finished run),
    "files", "report_dir"}``. Accuracies in the returned dicts are fractions; tables show percentages.
    """
    from kdlab.report import load_run, plot_xy

    st, _ = load_study(study)
    out_dir = Path(out if out is not None else st.out)
    rdir = Path(report_dir) if report_dir is not None else out_dir / "report"
    plan = plan_study(st, out=out_dir, validate=False)
    students = [r for r in plan if r.kind == "student"]
    axes = list(st.grid)
    cells: list[dict[str, str]] = []
    for r in students:
        if r.cell not in cells:
            cells.append(r.cell)
    labels = [cell_label(c) for c in cells]

    run_rows: list[dict[str, Any]] = []
    per: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in students:
        if not _finished(r.run_dir):
            continue
        rec = load_run(r.run_dir)
        top1 = rec.value(*METRIC)
        row = {"method": r.method, "cell": r.cell_label, **r.cell, "seed": r.seed, "top1": top1,
               "best_top1": rec.value("best", "test/top1"), "teacher_top1": rec.value("teacher", "test/top1"),
               "teacher_dir": r.teacher_dir, "teacher_weights": r.teacher_weights, "run_dir": r.run_dir}
        run_rows.append(row)
        per.setdefault((str(r.method), r.cell_label), []).append(row)

    # teacher of each cell: accuracy as the students saw it (summary "teacher" section), else the teacher run's
    # own final top-1; parameter count from its weights
    teacher_of: dict[str, dict[str, Any]] = {}
    for c, lab in zip(cells, labels):
        tdirs = sorted({r.teacher_dir for r in students if r.cell == c and r.teacher_dir})
        seen = [row["teacher_top1"] for m in st.methods for row in per.get((m, lab), [])
                if row["teacher_top1"] is not None]
        acc = _mean_std(seen)
        if acc is None and tdirs and _finished(tdirs[0]):
            v = load_run(tdirs[0]).value(*METRIC)
            acc = None if v is None else (v, 0.0)
        teacher_of[lab] = {"dirs": tdirs, "top1": None if acc is None else acc[0],
                           "params": _teacher_params(tdirs[0]) if tdirs else None}

    base = st.baseline
    cell_rows: list[dict[str, Any]] = []
    for m in st.methods:
        for c, lab in zip(cells, labels):
            vals = [row["top1"] for row in per.get((m, lab), []) if row["top1"] is not None]
            ms = _mean_std(vals)
            bvals = [row["top1"] for row in per.get((base, lab), []) if row["top1"] is not None] if base else []
            bms = _mean_std(bvals)
            xs = {a: (st.grid[a][c[a]].x if st.grid[a][c[a]].x is not None else _number(c[a])) for a in axes}
            cell_rows.append({
                "method": m, "cell": lab, **{a: c[a] for a in axes}, **{f"{a}_x": xs[a] for a in axes},
                "n": len(vals), "seeds": [row["seed"] for row in per.get((m, lab), []) if row["top1"] is not None],
                "top1_mean": None if ms is None else ms[0], "top1_std": None if ms is None else ms[1],
                "gain": None if (ms is None or bms is None) else ms[0] - bms[0],
                "teacher_top1": teacher_of[lab]["top1"], "teacher_params": teacher_of[lab]["params"],
            })
    get = {(r["method"], r["cell"]): r for r in cell_rows}
    nseeds = len(st.seeds)

    def fmt(r: dict[str, Any]) -> str:
        if r["top1_mean"] is None:
            return "–"
        s = f"{100 * r['top1_mean']:.2f} ± {100 * r['top1_std']:.2f}"
        return s + (f" (n={r['n']})" if r["n"] != nseeds else "")

    def fmt_gain(r: dict[str, Any]) -> str:
        if r["method"] == base:
            return "baseline"
        return "–" if r["gain"] is None else f"{100 * r['gain']:+.2f}"

    md_top = _md(["method", *labels], [[m, *[fmt(get[(m, lab)]) for lab in labels]] for m in st.methods])
    parts = [f"# Study `{st.name}`\n",
             f"{len(run_rows)} finished student runs of {len(students)} planned; {len(st.methods)} methods x "
             f"{len(cells)} cells x {len(st.seeds)} seeds {st.seeds}. Cells: final (last-epoch) test top-1 in %, "
             "mean ± sample std over seeds; (n=k) marks a cell with fewer finished seeds.\n",
             "## Final top-1 (%)\n", md_top]
    if base is not None:
        md_gain = _md(["method", *labels], [[m, *[fmt_gain(get[(m, lab)]) for lab in labels]] for m in st.methods])
        parts += [f"## Gain over standard training (`{base}`), percentage points\n",
                  "Difference of the mean final top-1 of the method and of the baseline, per cell.\n", md_gain]
    if any(t["dirs"] for t in teacher_of.values()):
        weights = sorted({str(r.teacher_weights) for r in students if r.teacher_weights})
        clean = st.teacher.clean if st.teacher is not None else None
        tb = [[lab, "–" if t["top1"] is None else f"{100 * t['top1']:.2f}",
               "–" if t["params"] is None else f"{t['params']:,}", ", ".join(f"`{d}`" for d in t["dirs"])]
              for lab, t in teacher_of.items()]
        parts += ["## Teachers\n",
                  f"Teacher weights: {', '.join(weights) or '–'}; trained on clean data: {clean}; top-1 as seen by "
                  "the students (else the teacher run's final top-1).\n",
                  _md(["cell", "teacher top-1 (%)", "parameters", "run"], tb)]

    rdir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    pngs = _plots(st, cell_rows, teacher_of, rdir, plot_xy)
    if pngs:
        parts.append("## Plots\n")
        parts += [f"![{p.stem}]({p.name})\n" for p in pngs]
    markdown = "\n".join(parts)
    md_path = rdir / "report.md"
    md_path.write_text(markdown, encoding="utf-8")
    files.append(md_path)

    def pct(v: float | None, scale: float = 100.0) -> str:
        return "" if v is None else f"{v * scale:.4f}"

    wide = [["method", *[h for lab in labels for h in (f"{lab} mean", f"{lab} std")], "n"]]
    wide += [[m, *[v for lab in labels for v in (pct(get[(m, lab)]["top1_mean"]), pct(get[(m, lab)]["top1_std"]))],
              min(get[(m, lab)]["n"] for lab in labels)] for m in st.methods]
    files.append(rdir / "top1.csv")
    files[-1].write_text(_csv(wide), encoding="utf-8")
    if base is not None:
        g = [["method", *labels]] + [[m, *[pct(get[(m, lab)]["gain"]) for lab in labels]] for m in st.methods]
        files.append(rdir / "gain.csv")
        files[-1].write_text(_csv(g), encoding="utf-8")
    keys = ["method", "cell", *axes, "n", "top1_mean", "top1_std", "gain", "teacher_top1", "teacher_params"]
    files.append(rdir / "cells.csv")
    files[-1].write_text(_csv([keys] + [["" if r[k] is None else r[k] for k in keys] for r in cell_rows]),
                         encoding="utf-8")
    rkeys = ["method", "cell", *axes, "seed", "top1", "best_top1", "teacher_top1", "teacher_weights", "teacher_dir",
             "run_dir"]
    files.append(rdir / "runs.csv")
    files[-1].write_text(_csv([rkeys] + [["" if r[k] is None else r[k] for k in rkeys] for r in run_rows]),
                         encoding="utf-8")
    return {"markdown": markdown, "cells": cell_rows, "runs": run_rows, "files": [*files, *pngs],
            "report_dir": str(rdir)}


def _plots(st: Study, cell_rows: list[dict[str, Any]], teacher_of: dict[str, dict[str, Any]], rdir: Path,
           plot_xy: Callable[..., Path]) -> list[Path]:
    rows = [{**r, "top1": None if r["top1_mean"] is None else 100 * r["top1_mean"],
             "top1_std": None if r["top1_std"] is None else 100 * r["top1_std"]} for r in cell_rows]
    pngs: list[Path] = []
    axes = list(st.grid)
    for axis in axes:
        xs = [r[f"{axis}_x"] for r in rows]
        if any(x is None for x in xs) or len(set(xs)) < 2:
            continue
        others = [a for a in axes if a != axis]
        combos = sorted({tuple(r[a] for a in others) for r in rows}, key=lambda c: [
            list(st.grid[a]).index(v) for a, v in zip(others, c)])
        positive = [x for x in xs if x > 0]
        logx = len(positive) == len(xs) and max(positive) / min(positive) >= 20
        for combo in combos:
            sel = [r for r in rows if tuple(r[a] for a in others) == combo]
            suffix = "".join(f"_{_safe(a)}-{_safe(v)}" for a, v in zip(others, combo))
            fixed = ", ".join(f"{a}={v}" for a, v in zip(others, combo))
            pngs.append(plot_xy(sel, f"{axis}_x", "top1", "method", rdir / f"top1_vs_{_safe(axis)}{suffix}.png",
                                xlabel=axis, ylabel="final top-1 (%)", logx=logx,
                                title=f"{st.name}: final top-1 vs {axis}" + (f" ({fixed})" if fixed else "")))
    distinct = {tuple(t["dirs"]) for t in teacher_of.values() if t["dirs"]}
    if len(distinct) > 1:
        for key, name, xlabel, logx in [("teacher_top1", "teacher_top1", "teacher final top-1 (%)", False),
                                        ("teacher_params", "teacher_params", "teacher parameters", True)]:
            sel = [{**r, "x": (None if r[key] is None else (100 * r[key] if key == "teacher_top1" else r[key]))}
                   for r in rows]
            if len({r["x"] for r in sel if r["x"] is not None}) < 2:
                continue
            pngs.append(plot_xy(sel, "x", "top1", "method", rdir / f"capacity_gap_{name}.png", xlabel=xlabel,
                                ylabel="student final top-1 (%)", logx=logx,
                                title=f"{st.name}: student vs teacher ({xlabel})"))
    return pngs


__all__ = ["CellValue", "MethodEntry", "PlannedRun", "Study", "TeacherPlan", "load_study", "plan_study",
           "run_study", "study_report"]
