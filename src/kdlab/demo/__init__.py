"""The embedded default demo: a teacher, then CE and Hinton-KD students over seeds, on digits, offline.

The recipes beside this file are ordinary kdlab recipes; the demo only fills in where the teacher's run
folder is (the CE students get it too, for the agreement and KL(T||S) metrics only: their objective has no
teacher term). Finished runs are reused, so a second `kdlab demo` only prints the table.
"""

from __future__ import annotations

import time
from pathlib import Path

from kdlab.engine import run_recipe
from kdlab.engine.progress import silenced
from kdlab.recipe import load_recipe
from kdlab.report import write_report

HERE = Path(__file__).parent


def demo_recipe(name: str, out: Path, seed: int = 0):
    overrides = [f"out={out}", f"seed={seed}"]
    if name != "teacher":
        overrides.append(f"teacher.run={out / 'teacher' / 'seed0'}")
    return load_recipe(HERE / f"{name}.yaml", overrides)


def run_demo(out: str | Path = "runs/demo", seeds: list[int] | None = None, force: bool = False) -> dict:
    from rich.console import Console

    console = Console()
    out = Path(out)
    seeds = seeds or [0, 1, 2]
    existing = "overwrite" if force else "resume"
    t0 = time.perf_counter()
    console.print(
        f"[bold]kdlab demo[/]: digits (scikit-learn), teacher smallcnn×2 -> student smallcnn×0.25, "
        f"seeds {seeds}; runs in {out}"
    )
    run_dirs = []
    with silenced():  # one line per run (its top-1 and time), not one per epoch
        run_recipe(demo_recipe("teacher", out), existing=existing)
        for name in ("ce", "kd"):
            for seed in seeds:
                r = demo_recipe(name, out, seed)
                run_recipe(r, existing=existing)
                run_dirs.append(r.run_dir())
    report = write_report(run_dirs, out / "report", baseline="ce")
    # The Markdown table reads well in any terminal and pastes into benchmarks/RESULTS.md as is.
    table = [line for line in report["markdown"].splitlines() if line.startswith("|")]
    console.print("\n[bold]Digits: CE vs Hinton KD[/] (mean ± std over seeds)", highlight=False)
    print("\n".join(table))
    elapsed = time.perf_counter() - t0
    console.print(f"report: {out / 'report' / 'report.md'}   total time {elapsed:.0f} s")
    return {"report": report, "seconds": elapsed}
