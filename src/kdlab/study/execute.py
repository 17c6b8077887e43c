"""Running a study: teachers, then the teacher caches, then students; in-process or in spawned workers.

A finished run is returned as is by the engine (``existing="resume"``), so running a study again redoes
nothing that finished; a failed run is reported at the end, after every other run was attempted.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kdlab.engine.progress import silenced
from kdlab.engine.run import run_recipe
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe
from kdlab.runfiles import STUDY_META, STUDY_PLAN, is_finished
from kdlab.study.plan import PlannedRun, plan_study
from kdlab.study.report import study_report
from kdlab.study.schema import load_study
from kdlab.teachers.load import prebuild_caches


def _write_meta(run: dict[str, Any]) -> None:
    path = Path(run["run_dir"]) / STUDY_META
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, path)


def _execute(recipe: dict[str, Any], run_dir: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Train (or return, if finished) one planned run. Module level so spawned workers can unpickle it."""
    was_finished = is_finished(run_dir)
    t0 = time.time()
    # wait=True: a run (or shared teacher) that another study process is training is waited for, then reused
    with silenced():  # the study prints one line per run; epoch lines of parallel workers would interleave
        summary = run_recipe(load_recipe(recipe), run_dir=run_dir, existing="resume", quiet=True, wait=True)
    _write_meta(meta)
    return {"run_dir": run_dir, "trained": not was_finished, "summary": summary, "wall_s": time.time() - t0}


def _init_worker() -> None:
    os.environ["KDLAB_THREADS"] = "1"
    torch.set_num_threads(1)


def _describe(r: PlannedRun) -> str:
    if r.kind == "teacher":
        return f"teacher {Path(r.run_dir).parent.name} seed {r.seed}"
    return f"{r.method} [{r.cell_label}] seed {r.seed}"


def _run_phase(
    runs: list[PlannedRun],
    workers: int | None,
    log: Callable[[str], None],
    done: dict[str, dict[str, Any]],
    failed: dict[str, str],
    counter: list[int],
    total: int,
) -> None:
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
    t0 = time.time()
    todo = [
        r
        for r in students
        if isinstance(r.recipe.get("teacher"), dict)
        and r.recipe["teacher"].get("cache") is not None
        and r.teacher_dir not in failed
    ]
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
    result: dict[str, Any] = {
        "study": study.name,
        "out": str(out_dir),
        "runs": [r.meta() for r in runs],
        "teachers": len(teachers),
        "students": len(students),
    }
    if dry_run:
        ncells = len({r.cell_label for r in students})
        log(
            f"study {study.name}: {len(teachers)} teacher runs + {len(students)} student runs "
            f"({len(study.methods)} methods x {ncells} cells x {len(study.seeds)} seeds) -> {out_dir}"
        )
        for r in runs:
            state = "finished" if is_finished(r.run_dir) else "to run"
            log(f"  {r.kind:7s} {_describe(r)}: {r.run_dir} ({state})")
        return {**result, "dry_run": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STUDY_PLAN).write_text(json.dumps({"study": study.model_dump(), "runs": result["runs"]}, indent=2))
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    counter = [0]
    total = len(runs)
    _run_phase(teachers, workers, log, done, failed, counter, total)
    result["cache_s"] = _cache_phase(students, log, failed)
    _run_phase(students, workers, log, done, failed, counter, total)
    result.update(
        trained=sum(r["trained"] for r in done.values()),
        reused=sum(not r["trained"] for r in done.values()),
        failed=dict(failed),
    )
    if failed:
        lines = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise KDLabError(
            f"study {study.name}: {len(failed)} of {total} runs failed: {lines}{more}; "
            "fix and run the study again (finished runs are kept)"
        )
    if report:
        result["report"] = study_report(study, out=out_dir)
        log(f"report: {Path(result['report']['files'][0])}")
    return result
