"""Per-epoch logs: ``metrics.jsonl`` (the record kdlab reads back) and TensorBoard events (for people)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is a core dependency; a stripped install just loses the curves
                warnings.warn("tensorboard is not installed: no TensorBoard curves (metrics.jsonl is written)",
                              stacklevel=2)

    def truncate(self, upto_global_epoch: int) -> None:
        """On resume, forget epochs logged after the checkpoint being resumed from."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("global_epoch", 0) <= upto_global_epoch:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["global_epoch"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "global_epoch"):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
