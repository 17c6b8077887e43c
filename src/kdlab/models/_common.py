"""Small helpers shared by the model families (input-shape checks, kwarg checks, weight init)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from kdlab.errors import KDLabError


def image_channels(input_shape: tuple[int, ...], model: str) -> int:
    """Channel count of a per-sample image shape ``(C, H, W)``; a clear error for anything else."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise KDLabError(
            f"model {model!r} is a 2-D convnet and needs input_shape (C, H, W); got {shape!r} "
            "(use 'mlp' for tabular data or 'cnn1d' for (C, L) signals)"
        )
    return int(shape[0])


def no_extra_kwargs(model: str, kwargs: Mapping[str, Any], allowed: tuple[str, ...] = ()) -> None:
    """Reject keyword arguments a builder does not understand instead of silently ignoring them."""
    extra = sorted(k for k in kwargs if k not in allowed)
    if extra:
        ok = f"; accepted: {', '.join(allowed)}" if allowed else "; it takes no extra arguments"
        raise KDLabError(f"model {model!r} got unknown argument(s) {', '.join(extra)}{ok}")


def init_fan_out(model: nn.Module, *, linear_std: float | None = None) -> None:
    """He-normal (fan-out) convs with zero bias, BN weight 1 / bias 0, and optionally N(0, std) linears.

    This is the initialisation used by the CIFAR zoo of RepDistiller (``normal_(0, sqrt(2 / (k*k*out)))``).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            n = math.prod(m.kernel_size) * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
