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


def conv_regressor(s_shape: tuple[int, ...], t_shape: tuple[int, ...], relu: bool = True) -> nn.Module:
    """RepDistiller's ``ConvReg`` (``models/util.py``), FitNet's hint regressor, for per-sample map shapes
    (C, H, W) or (C, L): a 1×1 conv at equal resolution, a stride-2 3×3 conv (padding 1) when the student map is
    twice the teacher's, a 4×4 stride-2 transposed conv (padding 1) when it is half, otherwise a valid conv of
    kernel ``n_s − n_t + 1`` per dimension (Romero et al. 2015, Sec. 2.2: the regressor's kernel maps the
    student's n_s×n_s grid onto the teacher's n_t×n_t); then BN and ReLU, as ConvReg (conv with bias, BN, ReLU).
    A student map smaller than the teacher's by another factor (RepDistiller raises) is first resized
    bilinearly to the teacher's grid and regressed by a 1×1 conv: our extension."""
    cs, ct = s_shape[0], t_shape[0]
    ns, nt = tuple(s_shape[1:]), tuple(t_shape[1:])
    two_d = len(s_shape) == 3
    conv, deconv = (nn.Conv2d, nn.ConvTranspose2d) if two_d else (nn.Conv1d, nn.ConvTranspose1d)
    norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
    layers: list[nn.Module] = []
    if all(a == 2 * b for a, b in zip(ns, nt)):
        layers.append(conv(cs, ct, 3, stride=2, padding=1))
    elif all(2 * a == b for a, b in zip(ns, nt)):
        layers.append(deconv(cs, ct, 4, stride=2, padding=1))
    elif all(a >= b for a, b in zip(ns, nt)):
        kernel = tuple(a - b + 1 for a, b in zip(ns, nt))
        layers.append(conv(cs, ct, kernel if two_d else kernel[0]))
    else:
        layers += [SpatialResize(nt), conv(cs, ct, 1)]
    layers.append(norm(ct))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_connector(
    s_shape: torch.Size | tuple[int, ...],
    t_shape: torch.Size | tuple[int, ...],
    *,
    kind: str = "conv1x1",
    bn: bool = True,
) -> nn.Module:
    """An adapter mapping per-sample student shape ``s_shape`` to teacher shape ``t_shape``.

    * vectors (C,) -> (C',): ``Linear`` (identity when equal);
    * maps (C, H, W) -> (C', H', W'): ``convreg`` (FitNet's regressor, RepDistiller's ConvReg: it changes the
      resolution itself, see ``conv_regressor``); or a spatial resize, then ``kind``: ``conv1x1`` (1×1 conv + BN,
      the AB/RepDistiller connector), ``conv3x3`` (3×3 conv + BN + ReLU at the teacher's resolution, a variant),
      or ``identity`` (only allowed when channels already match).
    """
    s_shape, t_shape = tuple(s_shape), tuple(t_shape)
    if len(s_shape) != len(t_shape):
        raise ValueError(
            f"cannot connect student features {s_shape} to teacher features {t_shape}: "
            "different ranks (tap a pooled/flattened layer on both sides)"
        )
    if len(s_shape) == 1:
        return nn.Identity() if s_shape == t_shape and kind == "identity" else nn.Linear(s_shape[0], t_shape[0])
    if kind == "convreg":
        return conv_regressor(s_shape, t_shape)
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
        raise ValueError(f"unknown connector kind {kind!r}: convreg, conv1x1, conv3x3, identity")
    return nn.Sequential(*layers) if layers else nn.Identity()
