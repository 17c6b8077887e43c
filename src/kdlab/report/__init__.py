"""Reports over run folders: per-method mean ± std tables (Markdown, CSV, terminal) and curves.

A run folder is one seed of one recipe as written by the engine (``summary.json``, ``metrics.jsonl``,
``recipe.yaml``). Runs are grouped by their resolved recipe without seed, ``out`` and ``name`` (a fingerprint),
so several seeds of one experiment become one row and different experiments that share a name do not; the
row label shows the fields in which same-named experiments differ. The spread over seeds is reported because
single-seed KD gains are often within seed noise; the gain column uses the last epoch.
``kdlab report RUNS... --out DIR`` calls :func:`write_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.report.aggregate import (
    STATS,
    Row,
    RunRecord,
    Stat,
    aggregate,
    find_runs,
    fingerprint,
    gain_over,
    group,
    load_run,
    load_runs,
    param_count,
    recipe_labels,
    stat,
)
from kdlab.report.plots import plot_curves, plot_xy
from kdlab.report.tables import (
    csv_table,
    csv_text,
    fmt_signed,
    fmt_stat,
    markdown_grid,
    markdown_table,
    rich_table,
    runs_csv,
)

__all__ = [
    "STATS",
    "Row",
    "RunRecord",
    "Stat",
    "aggregate",
    "csv_table",
    "csv_text",
    "find_runs",
    "fingerprint",
    "fmt_signed",
    "fmt_stat",
    "gain_over",
    "group",
    "load_run",
    "load_runs",
    "markdown_grid",
    "markdown_table",
    "param_count",
    "plot_curves",
    "plot_xy",
    "recipe_labels",
    "rich_table",
    "runs_csv",
    "stat",
    "write_report",
]

CURVE_METRICS = ("test/top1", "train/loss", "test/agree")  # plots of metrics no run logged are skipped


def write_report(
    paths: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Find and aggregate runs, write ``report.md``, ``report.csv`` (one row per experiment), ``runs.csv``
    (one row per run) and curve PNGs into ``out_dir``.

    Returns ``{"markdown": str, "rows": list[Row], "files": list[Path]}``; ``rows`` carry gains
    over ``baseline`` when one is given (an unknown baseline raises KDLabError before anything is written).
    """
    out_dir = Path(out_dir)
    records = load_runs(paths)
    rows = aggregate(records, by="recipe")
    if baseline is not None:
        rows = gain_over(rows, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot_curves(records, out_dir, metrics=CURVE_METRICS, by="recipe")

    table = markdown_table(rows, baseline=baseline)
    parts = [
        "# kdlab report\n",
        f"{len(records)} runs in {len(rows)} groups (one per resolved recipe, seed aside); mean ± sample std "
        "over seeds (accuracy, agreement and ECE in %, KL(T‖S) in nats; *best* is the epoch picked on "
        "validation top-1 when the run has a validation split, else on test top-1, so it is optimistic; "
        "*last* is the final epoch).\n",
        table,
    ]
    if baseline is not None:
        parts.append(f"Gain: difference of mean last-epoch top-1 vs `{baseline}`, in percentage points.\n")
    if pngs:
        parts.append("## Curves\n")
        parts += [f"![{p.stem}]({p.name})\n" for p in pngs]
    parts.append("## Runs\n")
    parts += [f"- `{r.name}` seed {r.seed}: `{r.path}`" for r in records]
    markdown = "\n".join(parts) + "\n"

    md_path = out_dir / "report.md"
    csv_path = out_dir / "report.csv"
    runs_path = out_dir / "runs.csv"
    md_path.write_text(markdown, encoding="utf-8")
    csv_path.write_text(csv_table(rows), encoding="utf-8")
    runs_path.write_text(runs_csv(records, recipe_labels(records)), encoding="utf-8")
    return {"markdown": markdown, "rows": rows, "files": [md_path, csv_path, runs_path, *pngs]}
