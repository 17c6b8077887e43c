"""Shared by the benchmark scripts: run arms × seeds (in parallel worker processes, one thread each),
then aggregate the run folders into a mean ± std table with kdlab's own report code.

An arm is (recipe files, overrides). Finished runs are reused, so a rerun only prints the table; pass
--force to retrain. Teachers named by the arms are trained first, once, before the workers start.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

Arm = tuple[list[str], list[str]]


def _job(job: tuple[list[str], list[str], bool, float | None]) -> str | None:
    files, overrides, force, deadline = job
    if deadline is not None and time.time() > deadline:
        return None  # past the budget: not started (a rerun without the budget trains it)
    os.environ["KDLAB_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from kdlab.engine import run_recipe
    from kdlab.recipe import load_recipe

    recipe = load_recipe(files, overrides)
    run_recipe(recipe, existing="overwrite" if force else "resume", quiet=True)
    return str(recipe.run_dir())


def run_arms(
    arms: dict[str, Arm],
    seeds: list[int],
    out: str | Path,
    *,
    workers: int = 2,
    force: bool = False,
    deadline: float | None = None,
    homes: dict[str, str | Path] | None = None,
) -> list[Path]:
    """The finished run folders; with a ``deadline`` (``time.time()``), runs not started by then are left out.
    ``homes`` puts an arm's runs under another folder than ``out`` (label -> folder): an arm shared by several
    tables, with the same recipe in each, then trains once."""
    from kdlab.engine.run import load_teacher
    from kdlab.recipe import load_recipe

    jobs = []
    for label, (files, overrides) in arms.items():
        for seed in seeds:
            home = (homes or {}).get(label, out)
            jobs.append((files, [*overrides, f"name={label}", f"out={home}", f"seed={seed}"], force, deadline))
    # Teachers first, sequentially, so that two workers never train the same teacher at once.
    seen = set()
    for files, overrides, *_ in jobs:
        r = load_recipe(files, overrides)
        for t in r.teachers:
            if t.run and t.run not in seen:
                seen.add(t.run)
                from kdlab.engine.run import build_data

                load_teacher(t, build_data(r), quiet=False)
    # Teacher caches (teacher.cache=auto) next, once each, so that the workers only read them.
    from kdlab.teachers.load import prebuild_caches

    prebuild_caches([load_recipe(f, o) for f, o, *_ in jobs])
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        return [Path(p) for p in ex.map(_job, jobs) if p is not None]


def report(
    run_dirs: list[Path],
    out: str | Path,
    baseline: str | None,
    title: str,
    started: float,
    setting: str = "1 thread per run, 2 runs at a time",
) -> str:
    from kdlab.report import write_report

    rep = write_report(run_dirs, Path(out) / "report", baseline=baseline)
    table = "\n".join(line for line in rep["markdown"].splitlines() if line.startswith("|"))
    import torch

    header = (
        f"### {title}\n\n{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {setting}; wall time {time.time() - started:.0f} s.\n"
    )
    text = f"{header}\n{table}\n"
    print(text)
    return text


def cli(description: str, default_seeds: str = "0-3") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", default=default_seeds, help="e.g. 0-3 or 0,1,2")
    p.add_argument("--out", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    lo, _, hi = a.seeds.partition("-")
    a.seed_list = list(range(int(lo), int(hi) + 1)) if hi else [int(s) for s in a.seeds.split(",")]
    return a
