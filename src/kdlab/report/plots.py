"""Training curves (mean over seeds, ±std band) and x–y study plots, written as PNGs.

matplotlib is imported inside the functions with the Agg backend so that reporting works on headless
machines and importing kdlab never pays matplotlib's import cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.report.aggregate import RunRecord, group

# Metrics that are fractions: plotted as percentages.
_PERCENT = {"test/top1", "test/top5", "test/agree", "test/ece", "train/top1", "train/acc"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(metric: str) -> str:
    return f"{metric} (%)" if metric in _PERCENT else metric


def _slug(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in metric)


def _series(rec: RunRecord, metric: str) -> dict[int, float]:
    """epoch -> value for one run. If epochs restart (multi-stage logs), the row index is used instead."""
    rows = [m for m in rec.metrics if m.get(metric) is not None]
    epochs = [m.get("epoch") for m in rows]
    monotone = all(isinstance(e, int) for e in epochs) and all(a < b for a, b in zip(epochs, epochs[1:]))
    if not monotone:
        epochs = list(range(1, len(rows) + 1))
    return {int(e): float(m[metric]) for e, m in zip(epochs, rows)}


def plot_curves(
    records: Sequence[RunRecord],
    out_dir: str | Path,
    metrics: Iterable[str] = ("test/top1", "train/loss"),
    by: str | Callable[[RunRecord], Any] = "name",
) -> list[Path]:
    """One PNG per metric, one line per group: mean over seeds, shaded ±std (where ≥2 seeds reach an epoch).

    Metrics that no run logged are skipped rather than drawn empty; returns the files written.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group(records, by)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    written: list[Path] = []
    for metric in metrics:
        scale = 100.0 if metric in _PERCENT else 1.0
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        drawn = False
        for gi, (label, recs) in enumerate(groups.items()):
            series = [s for s in (_series(r, metric) for r in recs) if s]
            if not series:
                continue
            epochs = sorted(set().union(*series))
            mean, std = [], []
            for e in epochs:
                vals = np.array([s[e] for s in series if e in s], dtype=float) * scale
                mean.append(vals.mean())
                std.append(vals.std(ddof=1) if len(vals) > 1 else 0.0)
            x, m, sd = np.array(epochs), np.array(mean), np.array(std)
            color = colors[gi % len(colors)]
            ax.plot(x, m, color=color, lw=1.6, marker="o" if len(x) == 1 else None, label=f"{label} (n={len(series)})")
            if len(series) > 1:
                ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.2, lw=0)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{_slug(metric)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_xy(
    table: Sequence[dict[str, Any]],
    x: str,
    y: str,
    hue: str,
    out: str | Path,
    *,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """Study plot: ``y`` against ``x``, one line per ``hue`` value (e.g. accuracy vs noise rate per method).

    Error bars come from ``f"{y}_std"`` or, failing that, a ``"y_std"`` key, when a row has one.
    Points are sorted by x within each line; rows missing x or y are skipped.
    """
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in table:
        if row.get(x) is None or row.get(y) is None:
            continue
        err = row.get(f"{y}_std", row.get("y_std"))
        lines.setdefault(str(row.get(hue)), []).append(
            (float(row[x]), float(row[y]), float("nan") if err is None else float(err))
        )
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, pts in lines.items():
        pts.sort(key=lambda p: p[0])
        xs, ys, es = (np.array(v) for v in zip(*pts))
        if np.isfinite(es).any():
            ax.errorbar(xs, ys, yerr=np.nan_to_num(es), marker="o", ms=4, capsize=3, lw=1.5, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=4, lw=1.5, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize="small", title=hue)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
