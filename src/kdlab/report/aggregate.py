"""Turn run folders (one seed of one recipe each) into per-method rows of mean ± std.

The engine writes ``summary.json`` last, so its presence marks a run folder; ``metrics.jsonl`` and
``recipe.yaml`` are read when present, and the summary is rebuilt from the per-epoch log when a key
is missing, so that a report never silently drops a run written by an older or interrupted engine.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors import safe_open

from kdlab.errors import KDLabError
from kdlab.runfiles import FINAL_WEIGHTS, METRICS, RECIPE, SUMMARY

# Row statistic key -> (section of summary.json, metric key). Order is the column order of tables.
STATS: dict[str, tuple[str, str]] = {
    "best_top1": ("best", "test/top1"),
    "last_top1": ("final", "test/top1"),
    "last_agree": ("final", "test/agree"),
    "last_kl_ts": ("final", "test/kl_ts"),
    "last_ece": ("final", "test/ece"),
    "teacher_top1": ("teacher", "test/top1"),
    "wall_s": ("", "wall_s"),  # "" is the summary's top level: the run's wall time
}


@dataclass
class RunRecord:
    """One run folder, loaded: what a report needs, with the raw files kept for custom views."""

    path: Path
    name: str
    seed: int | None
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    recipe: dict[str, Any] = field(default_factory=dict)

    def value(self, section: str, key: str) -> float | None:
        """``summary[section][key]`` (``summary[key]`` for section ``""``) as a float, or None when the run did
        not log it."""
        sec = self.summary if section == "" else self.summary.get(section)
        if not isinstance(sec, dict):
            return None
        v = sec.get(key)
        return None if v is None else float(v)


class Stat(NamedTuple):
    """Mean and sample std (ddof=1, 0 for a single run) over the ``n`` runs that logged the metric."""

    mean: float
    std: float
    n: int


@dataclass
class Row:
    """One group (usually one method) aggregated over its seeds."""

    label: str
    n: int
    seeds: list[int | None]
    stats: dict[str, Stat | None]
    runs: list[Path] = field(default_factory=list)
    baseline: str | None = None
    gain: dict[str, float] = field(default_factory=dict)  # mean(self) - mean(baseline), per stat key

    def get(self, key: str) -> Stat | None:
        return self.stats.get(key)


# ---------------------------------------------------------------------------------------- finding
def find_runs(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """Run folders under ``paths``: each path is a run folder or has run folders at any depth.

    Every path must contribute at least one run, so a typo in one of several paths is not hidden by
    the others. Order: the given path order, then sorted within a path; duplicates dropped.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise KDLabError("no run paths given")
    found: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise KDLabError(f"run path {str(p)!r} does not exist")
        if p.is_file():
            p = p.parent if p.name == SUMMARY else p
        if (p / SUMMARY).is_file():
            runs = [p]
        else:
            runs = sorted(s.parent for s in p.rglob(SUMMARY) if s.is_file())
        if not runs:
            raise KDLabError(f"no runs found under {str(p)!r} (no {SUMMARY} in it or below it)")
        for r in runs:
            key = r.resolve()
            if key not in seen:
                seen.add(key)
                found.append(r)
    return found


# ---------------------------------------------------------------------------------------- loading
def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl; a torn last line (run still writing) is dropped, other bad lines raise."""
    if not path.is_file():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out: list[dict[str, Any]] = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise KDLabError(f"{path}: line {i + 1} is not JSON ({e.msg})") from None
    return out


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise KDLabError(f"{path}: not valid YAML ({e})") from None
    return data if isinstance(data, dict) else {}


def _fill_from_metrics(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Fill missing ``final``/``best`` from the epoch log (last epoch; epoch of max test/top1)."""
    rows = [m for m in metrics if m.get("test/top1") is not None]
    if not rows:
        return
    tests = lambda m: {k: v for k, v in m.items() if k.startswith("test/") or k == "epoch"}  # noqa: E731
    if not isinstance(summary.get("final"), dict):
        summary["final"] = tests(rows[-1])
    if not isinstance(summary.get("best"), dict):
        summary["best"] = tests(max(rows, key=lambda m: m["test/top1"]))  # first max wins ties


def load_run(path: str | Path) -> RunRecord:
    """Load one run folder; the label and seed come from summary.json, else recipe.yaml, else the folder."""
    path = Path(path)
    if path.name == SUMMARY:
        path = path.parent
    sfile = path / SUMMARY
    if not sfile.is_file():
        raise KDLabError(f"{str(path)!r} is not a run folder (no {SUMMARY})")
    try:
        summary = json.loads(sfile.read_text())
    except json.JSONDecodeError as e:
        raise KDLabError(f"{sfile}: not valid JSON ({e.msg})") from None
    if not isinstance(summary, dict):
        raise KDLabError(f"{sfile}: expected a JSON object")
    metrics = _read_metrics(path / METRICS)
    recipe = _read_recipe(path / RECIPE)
    _fill_from_metrics(summary, metrics)
    name = summary.get("name") or recipe.get("name") or path.name
    seed = summary.get("seed", recipe.get("seed"))
    return RunRecord(
        path=path,
        name=str(name),
        seed=None if seed is None else int(seed),
        summary=summary,
        metrics=metrics,
        recipe=recipe,
    )


def load_runs(paths: Sequence[str | Path] | str | Path) -> list[RunRecord]:
    """``find_runs`` then ``load_run`` on each."""
    return [load_run(p) for p in find_runs(paths)]


# --------------------------------------------------------------------------------------- grouping
NOT_THE_EXPERIMENT = ("seed", "out", "name")  # fields that do not make two runs different experiments


def _core(rec: RunRecord) -> dict[str, Any]:
    """The resolved recipe without seed, output folder and name; the name alone when no recipe was saved."""
    if not rec.recipe:
        return {"name": rec.name}
    return {k: v for k, v in rec.recipe.items() if k not in NOT_THE_EXPERIMENT}


def fingerprint(rec: RunRecord) -> str:
    """A short hash of the resolved recipe without seed/out/name: runs with equal fingerprints are seeds
    of one experiment, whatever their names or folders."""
    blob = json.dumps(_core(rec), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(node, sort_keys=True, default=str)}


def recipe_labels(records: Sequence[RunRecord], max_fields: int = 3) -> dict[str, str]:
    """Row label per fingerprint: the recipe name, plus the fields that differ when several experiments
    share a name (``kd [objective.kd.tau=2.0]``); one experiment saved under several names lists them."""
    names: dict[str, list[str]] = {}
    first: dict[str, RunRecord] = {}
    for r in records:
        fp = fingerprint(r)
        first.setdefault(fp, r)
        if r.name not in names.setdefault(fp, []):
            names[fp].append(r.name)
    labels = {fp: " = ".join(ns) for fp, ns in names.items()}
    by_label: dict[str, list[str]] = {}
    for fp, label in labels.items():
        by_label.setdefault(label, []).append(fp)
    for label, fps in by_label.items():
        if len(fps) < 2:
            continue
        flats = {fp: _flat(_core(first[fp])) for fp in fps}
        keys = sorted(set().union(*flats.values()))
        differ = [k for k in keys if len({flats[fp].get(k, "–") for fp in fps}) > 1]
        for fp in fps:
            shown = [f"{k}={flats[fp].get(k, '–')}" for k in differ[:max_fields]]
            more = ", …" if len(differ) > max_fields else ""
            labels[fp] = f"{label} [{', '.join(shown) or fp}{more}]"
    return labels


def _lookup(rec: RunRecord, key: str) -> Any:
    """Attribute of the record, else a dotted key into the recipe (e.g. ``"method.T"``), else summary."""
    if "." not in key and hasattr(rec, key) and not callable(getattr(rec, key)):
        return getattr(rec, key)
    for src in (rec.recipe, rec.summary):
        cur: Any = src
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                break
            cur = cur[part]
        else:
            return cur
    raise KDLabError(f"run {str(rec.path)!r} has no {key!r} to group by")


def group(records: Iterable[RunRecord], by: str | Callable[[RunRecord], Any] = "name") -> dict[str, list[RunRecord]]:
    """Records by label, groups in first-seen order (so tables follow the order runs were given).

    ``by="recipe"`` groups by :func:`fingerprint` (the resolved recipe without seed, out and name) and labels
    each group with :func:`recipe_labels`; ``kdlab report`` uses it, so different experiments that share a
    name never become one row."""
    if by == "recipe":
        records = list(records)
        labels = recipe_labels(records)
        by = lambda r: labels[fingerprint(r)]  # noqa: E731
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        label = by(r) if callable(by) else _lookup(r, by)
        out.setdefault(str(label), []).append(r)
    return out


# ------------------------------------------------------------------------------------ aggregation
def stat(values: Iterable[float | None]) -> Stat | None:
    """Mean and sample std of the non-missing values; None when no run has the value."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    arr = np.asarray(vals, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return Stat(float(arr.mean()), std, len(arr))


def aggregate(records: Iterable[RunRecord], by: str | Callable[[RunRecord], Any] = "name") -> list[Row]:
    """One Row per group with mean ± std of every statistic in ``STATS``."""
    rows: list[Row] = []
    for label, recs in group(records, by).items():
        stats = {k: stat(r.value(sec, key) for r in recs) for k, (sec, key) in STATS.items()}
        rows.append(
            Row(
                label=label,
                n=len(recs),
                seeds=[r.seed for r in recs],
                stats=stats,
                runs=[r.path for r in recs],
            )
        )
    return rows


def gain_over(rows: Sequence[Row], baseline_label: str) -> list[Row]:
    """Copies of ``rows`` with ``gain[k] = mean_k(row) - mean_k(baseline)`` for every shared stat.

    Inputs are not modified. Gains are in the stat's own units (fractions for accuracies).
    """
    base = next((r for r in rows if r.label == baseline_label), None)
    if base is None:
        known = ", ".join(repr(r.label) for r in rows)
        raise KDLabError(f"baseline {baseline_label!r} is not among the methods: {known}")
    out = []
    for r in rows:
        gain = {}
        for k, s in r.stats.items():
            b = base.stats.get(k)
            if s is not None and b is not None and not (math.isnan(s.mean) or math.isnan(b.mean)):
                gain[k] = s.mean - b.mean
        out.append(replace(r, baseline=baseline_label, gain=gain))
    return out


def param_count(run_dir: str | Path) -> int | None:
    """Parameters of a run's final weights, read from the file's headers (BatchNorm running statistics
    excluded); None when the run has no weights."""
    path = Path(run_dir) / FINAL_WEIGHTS
    if not path.is_file():
        return None
    n = 0
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118  (safe_open is not iterable)
            if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue
            n += math.prod(f.get_slice(k).get_shape())
    return n
