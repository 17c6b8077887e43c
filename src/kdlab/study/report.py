"""A study's report: methods x grid cells tables, CSVs and plots of its finished runs.

Everything is computed and written through :mod:`kdlab.report` (run loading, mean ± sample std, Markdown and
CSV writers, plots); this module only arranges a study's cells.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdlab.report import (
    Stat,
    csv_text,
    fmt_signed,
    fmt_stat,
    load_run,
    markdown_grid,
    param_count,
    plot_xy,
    stat,
)
from kdlab.runfiles import is_finished
from kdlab.study.plan import cell_label, plan_study, safe_name
from kdlab.study.schema import Study, load_study

METRIC = ("final", "test/top1")  # the headline number: last-epoch test top-1 (never best-epoch, see seeds doc)


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


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
        if not is_finished(r.run_dir):
            continue
        rec = load_run(r.run_dir)
        top1 = rec.value(*METRIC)
        row = {
            "method": r.method,
            "cell": r.cell_label,
            **r.cell,
            "seed": r.seed,
            "top1": top1,
            "best_top1": rec.value("best", "test/top1"),
            "teacher_top1": rec.value("teacher", "test/top1"),
            "teacher_dir": r.teacher_dir,
            "teacher_weights": r.teacher_weights,
            "run_dir": r.run_dir,
        }
        run_rows.append(row)
        per.setdefault((str(r.method), r.cell_label), []).append(row)

    # teacher of each cell: accuracy as the students saw it (summary "teacher" section), else the teacher run's
    # own final top-1; parameter count from its weights
    teacher_of: dict[str, dict[str, Any]] = {}
    for c, lab in zip(cells, labels):
        tdirs = sorted({r.teacher_dir for r in students if r.cell == c and r.teacher_dir})
        seen = [
            row["teacher_top1"] for m in st.methods for row in per.get((m, lab), []) if row["teacher_top1"] is not None
        ]
        acc = stat(seen)
        top1 = acc.mean if acc is not None else None
        if top1 is None and tdirs and is_finished(tdirs[0]):
            top1 = load_run(tdirs[0]).value(*METRIC)
        teacher_of[lab] = {"dirs": tdirs, "top1": top1, "params": param_count(tdirs[0]) if tdirs else None}

    base = st.baseline
    cell_rows: list[dict[str, Any]] = []
    for m in st.methods:
        for c, lab in zip(cells, labels):
            vals = [row["top1"] for row in per.get((m, lab), []) if row["top1"] is not None]
            ms = stat(vals)
            bms = stat(row["top1"] for row in per.get((base, lab), [])) if base else None
            xs = {a: (st.grid[a][c[a]].x if st.grid[a][c[a]].x is not None else _number(c[a])) for a in axes}
            cell_rows.append(
                {
                    "method": m,
                    "cell": lab,
                    **{a: c[a] for a in axes},
                    **{f"{a}_x": xs[a] for a in axes},
                    "n": len(vals),
                    "seeds": [row["seed"] for row in per.get((m, lab), []) if row["top1"] is not None],
                    "top1_mean": None if ms is None else ms.mean,
                    "top1_std": None if ms is None else ms.std,
                    "gain": None if (ms is None or bms is None) else ms.mean - bms.mean,
                    "teacher_top1": teacher_of[lab]["top1"],
                    "teacher_params": teacher_of[lab]["params"],
                }
            )
    get = {(r["method"], r["cell"]): r for r in cell_rows}
    nseeds = len(st.seeds)

    def fmt(r: dict[str, Any]) -> str:
        if r["top1_mean"] is None:
            return fmt_stat(None)
        s = fmt_stat(Stat(r["top1_mean"], r["top1_std"], r["n"]))
        return s + (f" (n={r['n']})" if r["n"] != nseeds else "")

    def fmt_gain(r: dict[str, Any]) -> str:
        return "baseline" if r["method"] == base else fmt_signed(r["gain"])

    md_top = markdown_grid(["method", *labels], [[m, *[fmt(get[(m, lab)]) for lab in labels]] for m in st.methods])
    parts = [
        f"# Study `{st.name}`\n",
        f"{len(run_rows)} finished student runs of {len(students)} planned; {len(st.methods)} methods x "
        f"{len(cells)} cells x {len(st.seeds)} seeds {st.seeds}. Cells: final (last-epoch) test top-1 in %, "
        "mean ± sample std over seeds; (n=k) marks a cell with fewer finished seeds.\n",
        "## Final top-1 (%)\n",
        md_top,
    ]
    if base is not None:
        md_gain = markdown_grid(
            ["method", *labels], [[m, *[fmt_gain(get[(m, lab)]) for lab in labels]] for m in st.methods]
        )
        parts += [
            f"## Gain over standard training (`{base}`), percentage points\n",
            "Difference of the mean final top-1 of the method and of the baseline, per cell.\n",
            md_gain,
        ]
    if any(t["dirs"] for t in teacher_of.values()):
        weights = sorted({str(r.teacher_weights) for r in students if r.teacher_weights})
        clean = st.teacher.clean if st.teacher is not None else None
        tb = [
            [
                lab,
                "–" if t["top1"] is None else f"{100 * t['top1']:.2f}",
                "–" if t["params"] is None else f"{t['params']:,}",
                ", ".join(f"`{d}`" for d in t["dirs"]),
            ]
            for lab, t in teacher_of.items()
        ]
        parts += [
            "## Teachers\n",
            f"Teacher weights: {', '.join(weights) or '–'}; trained on clean data: {clean}; top-1 as seen by "
            "the students (else the teacher run's final top-1).\n",
            markdown_grid(["cell", "teacher top-1 (%)", "parameters", "run"], tb),
        ]

    rdir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    pngs = _plots(st, cell_rows, teacher_of, rdir)
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
    wide += [
        [
            m,
            *[v for lab in labels for v in (pct(get[(m, lab)]["top1_mean"]), pct(get[(m, lab)]["top1_std"]))],
            min(get[(m, lab)]["n"] for lab in labels),
        ]
        for m in st.methods
    ]
    files.append(rdir / "top1.csv")
    files[-1].write_text(csv_text(wide), encoding="utf-8")
    if base is not None:
        g = [["method", *labels]] + [[m, *[pct(get[(m, lab)]["gain"]) for lab in labels]] for m in st.methods]
        files.append(rdir / "gain.csv")
        files[-1].write_text(csv_text(g), encoding="utf-8")
    keys = ["method", "cell", *axes, "n", "top1_mean", "top1_std", "gain", "teacher_top1", "teacher_params"]
    files.append(rdir / "cells.csv")
    files[-1].write_text(csv_text([keys] + [[r[k] for k in keys] for r in cell_rows]), encoding="utf-8")
    rkeys = [
        "method",
        "cell",
        *axes,
        "seed",
        "top1",
        "best_top1",
        "teacher_top1",
        "teacher_weights",
        "teacher_dir",
        "run_dir",
    ]
    files.append(rdir / "runs.csv")
    files[-1].write_text(csv_text([rkeys] + [[r[k] for k in rkeys] for r in run_rows]), encoding="utf-8")
    return {
        "markdown": markdown,
        "cells": cell_rows,
        "runs": run_rows,
        "files": [*files, *pngs],
        "report_dir": str(rdir),
    }


def _plots(st: Study, cell_rows: list[dict[str, Any]], teacher_of: dict[str, dict[str, Any]], rdir: Path) -> list[Path]:
    rows = [
        {
            **r,
            "top1": None if r["top1_mean"] is None else 100 * r["top1_mean"],
            "top1_std": None if r["top1_std"] is None else 100 * r["top1_std"],
        }
        for r in cell_rows
    ]
    pngs: list[Path] = []
    axes = list(st.grid)
    for axis in axes:
        xs = [r[f"{axis}_x"] for r in rows]
        if any(x is None for x in xs) or len(set(xs)) < 2:
            continue
        others = [a for a in axes if a != axis]
        combos = sorted(
            {tuple(r[a] for a in others) for r in rows},
            key=lambda c: [list(st.grid[a]).index(v) for a, v in zip(others, c)],
        )
        positive = [x for x in xs if x > 0]
        logx = len(positive) == len(xs) and max(positive) / min(positive) >= 20
        for combo in combos:
            sel = [r for r in rows if tuple(r[a] for a in others) == combo]
            suffix = "".join(f"_{safe_name(a)}-{safe_name(v)}" for a, v in zip(others, combo))
            fixed = ", ".join(f"{a}={v}" for a, v in zip(others, combo))
            png = rdir / f"top1_vs_{safe_name(axis)}{suffix}.png"
            pngs.append(
                plot_xy(
                    sel,
                    f"{axis}_x",
                    "top1",
                    "method",
                    png,
                    xlabel=axis,
                    ylabel="final top-1 (%)",
                    logx=logx,
                    title=f"{st.name}: final top-1 vs {axis}" + (f" ({fixed})" if fixed else ""),
                )
            )
    distinct = {tuple(t["dirs"]) for t in teacher_of.values() if t["dirs"]}
    if len(distinct) > 1:
        for key, name, xlabel, logx in [
            ("teacher_top1", "teacher_top1", "teacher final top-1 (%)", False),
            ("teacher_params", "teacher_params", "teacher parameters", True),
        ]:
            sel = [
                {**r, "x": (None if r[key] is None else (100 * r[key] if key == "teacher_top1" else r[key]))}
                for r in rows
            ]
            if len({r["x"] for r in sel if r["x"] is not None}) < 2:
                continue
            pngs.append(
                plot_xy(
                    sel,
                    "x",
                    "top1",
                    "method",
                    rdir / f"capacity_gap_{name}.png",
                    xlabel=xlabel,
                    ylabel="student final top-1 (%)",
                    logx=logx,
                    title=f"{st.name}: student vs teacher ({xlabel})",
                )
            )
    return pngs
