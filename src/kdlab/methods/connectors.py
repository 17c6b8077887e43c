"""Automatic connectors: adapters from a student feature shape to a teacher feature shape.

Built from the shapes probed once at start-up, trained with the student (they live in the objective, so
they are in the optimizer and the checkpoint) and dropped at export (they are never part of the student).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialResize(nn.Module):
    """Match a feature map's spatial size: adaptive average pooling when shrinking, bilinear when growing."""

    def __init__(self, size: tuple[int, ...]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.size:
            return x
        if all(a >= b for a, b in zip(x.shape[2:], self.size)):
            return F.adaptive_avg_pool2d(x, self.size) if x.dim() == 4 else F.adaptive_avg_pool1d(x, self.size)
        mode = "bilinear" if x.dim() == 4 else "linear"
        return F.interpolate(x, size=self.size, mode=mode, align_corners=False)


def make_connector(s_shape: torch.Size | tuple[int, ...], t_shape: torch.Size | tuple[int, ...], *,
                   kind: str = "conv1x1", bn: bool = True) -> nn.Module:
    """An adapter mapping per-sample student shape ``s_shape`` to teacher shape ``t_shape``.

    * vectors (C,) -> (C',): ``Linear`` (identity when equal);
    * maps (C, H, W) -> (C', H', W'): spatial resize, then ``kind``: ``conv1x1`` (1×1 conv + BN, the
      FitNet/AB/RepDistiller default), ``conv3x3`` (3×3 conv + BN + ReLU, RepDistiller's FitNet
      regressor), or ``identity`` (only allowed when channels already match).
    """
    s_shape, t_shape = tuple(s_shape), tuple(t_shape)
    if len(s_shape) != len(t_shape):
        raise ValueError(f"cannot connect student features {s_shape} to teacher features {t_shape}: "
                         "different ranks (tap a pooled/flattened layer on both sides)")
    if len(s_shape) == 1:
        return nn.Identity() if s_shape == t_shape and kind == "identity" else nn.Linear(s_shape[0], t_shape[0])
    layers: list[nn.Module] = []
    if s_shape[1:] != t_shape[1:]:
        layers.append(SpatialResize(t_shape[1:]))
    cs, ct = s_shape[0], t_shape[0]
    conv = nn.Conv2d if len(s_shape) == 3 else nn.Conv1d
    norm = nn.BatchNorm2d if len(s_shape) == 3 else nn.BatchNorm1d
    if kind == "identity":
        if cs != ct:
            raise ValueError(f"identity connector needs equal channels, got {cs} -> {ct}")
    elif kind == "conv1x1":
        layers += [conv(cs, ct, 1, bias=not bn)] + ([norm(ct)] if bn else [])
    elif kind == "conv3x3":
        layers += [conv(cs, ct, 3, padding=1, bias=not bn)] + ([norm(ct)] if bn else []) + [nn.ReLU()]
    else:
        raise ValueError(f"unknown connector kind {kind!r}: conv1x1, conv3x3, identity")
    return nn.Sequential(*layers) if layers else nn.Identity()
