"""What people see while a run trains.

- On a terminal: a rich bar per epoch with the running training loss and the last held-out top-1; it is
  transient, and one line per epoch stays in the terminal once the epoch is evaluated.
- Not on a terminal (nohup, SLURM, a pipe): no bar, the same line per epoch, printed plainly and flushed.
- ``train.progress``: None (default) = bar only on a terminal; true = always the bar; false = neither bar
  nor lines. Study runs are ``silenced()``: the study prints one line per run.
- Ctrl-C: the CLI stops any live bar and prints the real resume command (``interrupted_message``).

Only rank 0 shows anything under torchrun.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from kdlab.runfiles import RECIPE

READ_EVERY_S = 0.5
_SILENT = False  # inside ``silenced()``
_ACTIVE: list[Any] = []  # live rich bars, stopped on Ctrl-C
_RUN: Path | None = None  # the run folder the CLI is training: what to resume after Ctrl-C


def _top1(last: dict[str, Any] | None) -> str:
    if not last:
        return "top-1 –"
    key = "val/top1" if "val/top1" in last else "test/top1"
    return f"{'val' if key == 'val/top1' else 'test'} top-1 {100 * last[key]:.2f}%" if key in last else "top-1 –"


class EpochBar:
    """One epoch's bar: ``step(loss)`` advances it (``loss``: the running mean so far, when known)."""

    def __init__(self, label: str, total: int, last: dict[str, Any] | None = None, console: Any = None):
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(escape(label)),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[top1]}"),
            TimeRemainingColumn(),
            transient=True,
            console=console,
        )
        self.task = self.progress.add_task(label, total=total, loss="–", top1=_top1(last))
        self.total, self.done, self.read_at = total, 0, 0.0
        self.progress.start()
        _ACTIVE.append(self)

    def step(self, loss: float | Callable[[], float] | None = None) -> None:
        """Advance by one step. ``loss`` may be a function that reads the running loss from the device: it is
        called at most every ``READ_EVERY_S`` seconds, so a visible bar costs about two host syncs a second."""
        self.done += 1
        now = time.monotonic()
        if callable(loss):
            if now - self.read_at < READ_EVERY_S and self.done < self.total:
                loss = None
            else:
                self.read_at, loss = now, loss()
        if loss is None:
            self.progress.advance(self.task)
        else:
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}")

    def stop(self) -> None:
        self.progress.stop()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


class NoBar:
    """Stands in for the bar where none is shown (not a terminal, or train.progress false)."""

    def step(self, loss: float | Callable[[], float] | None = None) -> None:
        pass

    def stop(self) -> None:
        pass


class TaskBar:
    """Progress of one long task that is not an epoch (decoding images, building a teacher cache): a rich bar
    on a terminal; elsewhere, when ``lines`` is given, one line per tenth with the rate and the time left, so
    that a log shows the task alive; else nothing. ``advance(n)`` counts ``unit``s done."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        setting: bool | None = None,
        lines: Callable[[str], Any] | None = None,
        unit: str = "items",
        console: Any = None,
    ):
        self.label, self.total, self.unit, self.lines = label, total, unit, lines
        self.done, self.next_tenth, self.t0 = 0, 1, time.monotonic()
        self.bar: Any = None
        if total > 0 and show_bar(setting) and not _SILENT:
            from rich.markup import escape
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(escape(label)),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()
            _ACTIVE.append(self)
        elif setting is False or total <= 0:
            self.lines = None

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(self.task, n)
            return
        while self.lines is not None and self.next_tenth <= 10 and 10 * self.done >= self.next_tenth * self.total:
            dt = max(time.monotonic() - self.t0, 1e-9)
            left = (self.total - self.done) * dt / max(self.done, 1)
            self.lines(
                f"{self.label}: {10 * self.next_tenth}% ({self.done / dt:,.0f} {self.unit}/s, {left:.0f} s left)"
            )
            self.next_tenth += 1

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            if self in _ACTIVE:
                _ACTIVE.remove(self)


def show_bar(setting: bool | None, stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(setting) if setting is not None else bool(getattr(stream, "isatty", lambda: False)())


def epoch_bar(
    label: str,
    total: int,
    *,
    setting: bool | None,
    main: bool = True,
    last: dict[str, Any] | None = None,
    console: Any = None,
) -> EpochBar | NoBar:
    if not main or _SILENT or not show_bar(setting):
        return NoBar()
    return EpochBar(label, total, last, console)


def format_epoch(label: str, record: dict[str, Any]) -> str:
    """``kd [main] epoch 3/30  loss 0.4312  test top-1 91.20%  lr 0.05  2.1 s`` (held-out parts when evaluated)."""
    parts = [label]
    if "train/loss" in record:
        parts.append(f"loss {record['train/loss']:.4f}")
    if "test/top1" in record:
        parts.append(f"test top-1 {100 * record['test/top1']:.2f}%")
    if "val/top1" in record:
        parts.append(f"val top-1 {100 * record['val/top1']:.2f}%")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.4g}")
    if "time/epoch_s" in record:
        parts.append(f"{record['time/epoch_s']:.1f} s")
    return "  ".join(parts)


def epoch_line(
    label: str, record: dict[str, Any], *, setting: bool | None, main: bool = True, stream: TextIO | None = None
) -> None:
    """One line per epoch on stderr (flushed, so that nohup/SLURM logs show it at once)."""
    if not main or _SILENT or setting is False:
        return
    stream = stream or sys.stderr
    print(format_epoch(label, record), file=stream, flush=True)


@contextmanager
def silenced():
    """No bars and no epoch lines inside (studies print one line per run instead, from several workers)."""
    global _SILENT
    before, _SILENT = _SILENT, True
    try:
        yield
    finally:
        _SILENT = before


def current_run(run_dir: str | Path) -> None:
    """The run folder the CLI is training now (the outermost: a teacher trained on the way resumes with it)."""
    global _RUN
    _RUN = Path(run_dir)


def stop_bars() -> None:
    for bar in list(_ACTIVE):
        try:
            bar.stop()
        except Exception:  # noqa: BLE001  (the terminal is being torn down anyway)
            _ACTIVE.remove(bar)


def interrupted_message() -> str:
    """After Ctrl-C: the command that continues the interrupted run from its last epoch checkpoint."""
    stop_bars()
    run = _RUN
    if run is not None and (run / RECIPE).exists():
        return (
            f"kdlab: interrupted; continue with: kdlab run --resume {shlex.quote(str(run))}  "
            "(from its last checkpoint; finished runs are kept)"
        )
    return "kdlab: interrupted; run the same command again to continue (finished epochs and runs are kept)"


__all__ = [
    "EpochBar",
    "epoch_bar",
    "epoch_line",
    "format_epoch",
    "interrupted_message",
    "stop_bars",
    "current_run",
    "silenced",
]
