"""Per-device defaults: which precision and memory format a run uses when the recipe says ``auto``.

Measured on this project's 2-core x86 CPU (benchmarks/RESULTS.md, "Teacher cache"): channels_last is ~1.2x
faster than NCHW for the CIFAR zoo at 32x32, while bf16 autocast halves the speed (no AMX). On CUDA devices
with bf16, bf16 autocast and channels_last are the usual fast path. Small images (digits, 8x8) gain nothing
from channels_last, so ``auto`` keeps NCHW below 16x16.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlab.errors import KDLabError

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise KDLabError(f"train.device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KDLabError("train.device: cuda requested but no CUDA device is available (use auto or cpu)")
    return dev


def bf16_fast(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def precision_for(train: Any, device: torch.device) -> str:
    """The student's autocast precision: the recipe's, or for ``auto`` bf16 where the device runs it fast."""
    p = train.precision
    if p == "auto":
        p = "bf16" if bf16_fast(device) else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise KDLabError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return p


def memory_format_for(train: Any, input_shape: tuple[int, ...], device: torch.device) -> torch.memory_format | None:
    """channels_last for image batches when the recipe asks, or for ``auto`` on images of at least 16x16."""
    if len(input_shape) != 3:
        return None
    on = train.channels_last
    if on is None:
        on = input_shape[1] * input_shape[2] >= 256
    return torch.channels_last if on else None


def teacher_autocast(train: Any, device: torch.device) -> torch.dtype | None:
    """The frozen teacher runs under bf16 autocast where the device runs it fast (``train.teacher_bf16``)."""
    return torch.bfloat16 if train.teacher_bf16 and bf16_fast(device) else None
