"""Reports over run folders: per-method mean ± std tables (Markdown, CSV, terminal) and curves.

A run folder is one seed of one recipe as written by the engine (``summary.json``, ``metrics.jsonl``,
``recipe.yaml``). Runs are grouped by their recipe ``name`` so several seeds become one row; the
spread over seeds is reported because single-seed KD gains are often within seed noise.
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
    gain_over,
    group,
    load_run,
    load_runs,
)
from kdlab.report.plots import plot_curves, plot_xy
from kdlab.report.tables import csv_table, markdown_table, rich_table

__all__ = [
    "STATS",
    "Row",
    "RunRecord",
    "Stat",
    "aggregate",
    "csv_table",
    "find_runs",
    "gain_over",
    "group",
    "load_run",
    "load_runs",
    "markdown_table",
    "plot_curves",
    "plot_xy",
    "rich_table",
    "write_report",
]

CURVE_METRICS = ("test/top1", "train/loss", "test/agree")  # plots of metrics no run logged are skipped


def write_report(
    paths: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Find and aggregate runs, write ``report.md``, ``report.csv`` and curve PNGs into ``out_dir``.

    Returns ``{"markdown": str, "rows": list[Row], "files": list[Path]}``; ``rows`` carry gains
    over ``baseline`` when one is given (an unknown baseline raises KDLabError before anything is written).
    """
    out_dir = Path(out_dir)
    records = load_runs(paths)
    rows = aggregate(records)
    if baseline is not None:
        rows = gain_over(rows, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot_curves(records, out_dir, metrics=CURVE_METRICS)

    table = markdown_table(rows, baseline=baseline)
    parts = [
        "# kdlab report\n",
        f"{len(records)} runs in {len(rows)} groups; mean ± sample std over seeds "
        "(accuracy, agreement and ECE in %, KL(T‖S) in nats; *best* is the epoch of highest "
        "test top-1, *last* the final epoch).\n",
        table,
    ]
    if baseline is not None:
        parts.append(f"Gain: difference of mean best top-1 vs `{baseline}`, in percentage points.\n")
    if pngs:
        parts.append("## Curves\n")
        parts += [f"![{p.stem}]({p.name})\n" for p in pngs]
    parts.append("## Runs\n")
    parts += [f"- `{r.name}` seed {r.seed}: `{r.path}`" for r in records]
    markdown = "\n".join(parts) + "\n"

    md_path = out_dir / "report.md"
    csv_path = out_dir / "report.csv"
    md_path.write_text(markdown, encoding="utf-8")
    csv_path.write_text(csv_table(rows), encoding="utf-8")
    return {"markdown": markdown, "rows": rows, "files": [md_path, csv_path, *pngs]}
