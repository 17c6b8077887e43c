"""Rows as Markdown (for report.md), CSV (for further analysis) and a rich table (for the terminal).

Human-facing tables show fractions (accuracy, agreement, ECE) as percentages with 2 decimals and
KL in nats with 3; CSV keeps raw fractions at full precision so nothing is lost to rounding.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from kdlab.report.aggregate import STATS, Row, RunRecord, Stat, fingerprint, gain_over

MISSING = "–"


@dataclass(frozen=True)
class Column:
    key: str  # Row.stats key
    header: str
    scale: float  # 100 for fractions shown as %
    digits: int


COLUMNS: list[Column] = [
    Column("best_top1", "top-1 best (%)", 100.0, 2),
    Column("last_top1", "top-1 last (%)", 100.0, 2),
    Column("last_agree", "agreement (%)", 100.0, 2),
    Column("last_kl_ts", "KL(T‖S)", 1.0, 3),
    Column("last_ece", "ECE (%)", 100.0, 2),
]
TEACHER = Column("teacher_top1", "teacher top-1 (%)", 100.0, 2)
WALL = Column("wall_s", "run time (min)", 1 / 60, 1)
# The gain is on the last epoch: the best epoch is picked on the test set itself unless the run has a
# validation split, so a best-epoch gain is optimistically biased (most for noisy, small test sets).
GAIN_KEY = "last_top1"


def fmt_stat(s: Stat | None, scale: float = 100.0, digits: int = 2) -> str:
    """``"71.23 ± 0.45"``; ``"–"`` when the metric is missing."""
    if s is None:
        return MISSING
    return f"{s.mean * scale:.{digits}f} ± {s.std * scale:.{digits}f}"


def fmt_signed(v: float | None, scale: float = 100.0, digits: int = 2) -> str:
    """``"+1.23"`` (percentage points for fractions); ``"–"`` when missing."""
    return MISSING if v is None else f"{v * scale:+.{digits}f}"


def fmt_gain(row: Row, key: str = GAIN_KEY, scale: float = 100.0, digits: int = 2) -> str:
    """Signed difference of means (percentage points for accuracies); ``"baseline"`` on the baseline row."""
    if row.baseline is not None and row.label == row.baseline:
        return "baseline"
    return fmt_signed(row.gain.get(key), scale, digits)


def _layout(rows: Sequence[Row], baseline: str | None) -> tuple[list[Row], list[str], list[list[str]]]:
    """Shared header/cell strings for the Markdown and rich tables."""
    rows = list(gain_over(rows, baseline) if baseline is not None else rows)
    cols = list(COLUMNS)
    if any(r.get(TEACHER.key) is not None for r in rows):
        cols.append(TEACHER)  # only when some run was distilled from a teacher
    if any(r.get(WALL.key) is not None for r in rows):
        cols.append(WALL)
    headers = ["method", "seeds"] + [c.header for c in cols]
    if baseline is not None:
        headers.append(f"last-epoch gain vs {baseline} (pp)")
    body = []
    for r in rows:
        cells = [r.label, str(r.n)] + [fmt_stat(r.get(c.key), c.scale, c.digits) for c in cols]
        if baseline is not None:
            cells.append(fmt_gain(r))
        body.append(cells)
    return rows, headers, body


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown_grid(headers: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    """Any table as GitHub-flavoured Markdown: first column left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = [
        "| " + " | ".join(_md_escape(str(h)) for h in headers) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(_md_escape(str(c)) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Row], baseline: str | None = None) -> str:
    """GitHub-flavoured Markdown table; with ``baseline``, a column of top-1 (best) gain over it."""
    _, headers, body = _layout(rows, baseline)
    return markdown_grid(headers, body)


def csv_text(rows: Sequence[Sequence[object]]) -> str:
    """Rows (the first one usually the header) as CSV text with ``\\n`` line ends; None is written as empty."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def csv_table(rows: Sequence[Row]) -> str:
    """CSV with raw values: ``<stat>_mean``, ``<stat>_std``, ``<stat>_n`` per stat, plus gains if set."""
    gain_keys = [k for k in STATS if any(k in r.gain for r in rows)]
    header = ["method", "seeds", "seed_list"]
    for k in STATS:
        header += [f"{k}_mean", f"{k}_std", f"{k}_n"]
    if gain_keys:
        header += ["baseline"] + [f"gain_{k}" for k in gain_keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        line: list[object] = [r.label, r.n, " ".join("" if s is None else str(s) for s in r.seeds)]
        for k in STATS:
            s = r.get(k)
            line += ["", "", 0] if s is None else [repr(s.mean), repr(s.std), s.n]
        if gain_keys:
            line += [r.baseline or ""] + [repr(r.gain[k]) if k in r.gain else "" for k in gain_keys]
        w.writerow(line)
    return buf.getvalue()


def runs_csv(records: Sequence[RunRecord], labels: dict[str, str] | None = None) -> str:
    """One line per run (raw fractions): its row label, name, seed, recipe fingerprint, folder and every stat,
    so that per-seed numbers can be checked or re-analysed outside kdlab."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "name", "seed", "fingerprint", "path", "best_epoch", *STATS])
    for r in records:
        fp = fingerprint(r)
        best = r.summary.get("best") if isinstance(r.summary.get("best"), dict) else {}
        values = [r.value(sec, key) for sec, key in STATS.values()]
        w.writerow(
            [
                (labels or {}).get(fp, r.name),
                r.name,
                "" if r.seed is None else r.seed,
                fp,
                str(r.path),
                best.get("epoch", ""),
                *("" if v is None else repr(v) for v in values),
            ]
        )
    return buf.getvalue()


def rich_table(rows: Sequence[Row], baseline: str | None = None, title: str | None = None):
    """The Markdown table's content as a ``rich.table.Table`` for ``console.print``."""
    from rich.table import Table

    rows, headers, body = _layout(rows, baseline)
    table = Table(title=title, header_style="bold")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r, cells in zip(rows, body):
        style = "dim" if baseline is not None and r.label == baseline else None
        table.add_row(*cells, style=style)
    return table
