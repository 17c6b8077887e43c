"""Per-epoch sums of the logged losses, kept on the device so that a step never waits for the host."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdlab.errors import KDLabError


class DeviceSums:
    """Per-epoch sums of the logged losses, kept on the device (no host sync per step) in float64 where the
    device has it, and the first step whose total loss was not finite."""

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.sums: dict[str, Any] = {}
        self.count = 0
        self.bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.checked = 0

    def add(self, step: int, n: int, total: torch.Tensor, named: dict[str, Any]) -> None:
        self.count += n
        t = total.detach()
        self.bad = torch.where((self.bad < 0) & ~torch.isfinite(t), torch.full_like(self.bad, step), self.bad)
        for k, v in (("loss", t), *named.items()):
            v = v.detach().to(self.dtype) * n if isinstance(v, torch.Tensor) else float(v) * n
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def check(self, where: str, step: int) -> None:
        """Read the first non-finite step (one host sync) and raise naming it and the non-finite losses."""
        bad = int(self.bad)
        if bad >= 0:
            nonfinite = [k for k, v in self.sums.items() if not np.isfinite(float(v))]
            raise KDLabError(
                f"non-finite loss at {where} step {bad} (checked over steps {self.checked}-{step}); "
                f"non-finite: {', '.join(nonfinite) or 'total'}; lower the learning rate or set "
                "train.grad_clip"
            )
        self.checked = step + 1

    def read(self) -> tuple[dict[str, float], int]:
        return {k: float(v) for k, v in self.sums.items()}, self.count
