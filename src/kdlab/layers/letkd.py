"""The letKD layer (Gorgun, Gurbuz, Alatan, "Knowledge Distillation Layer that Lets the Student Decide",
BMVC 2023; github.com/adagorgun/letKD-framework ``valueLayer.py``), inserted into a student and kept at inference.

At every location of the student map x (C channels)::

    a = s1 * cos(W1, x)              # "scores": cosine 1x1 conv C -> K, rows of W1 and x L2-normalised, s1 init 3.0
    u = ReLU(BN(a))                  # sparse assignment (BatchNorm2d over the K score channels)
    v = s2 * cos(W2, u)              # "value": cosine 1x1 conv K -> C, s2 init 1.0
    out = x + alpha * v              # alpha: a forward scale ("value_ratio"), not a loss weight

No biases; s1 and s2 are learnable scalars. The scores are the output of the ``scores`` submodule, so a term taps
them as ``"<insertion path>.layer.scores"`` (letKD's ``letkd_penult`` / ``letkd_inter`` terms supervise them with
the teacher's soft assignments). alpha = 0 returns x itself (the value path is skipped): the student's outputs are
then exactly the unmodified student's, and only the scores (for a KL term, QuEST-style) remain.

Parameters added: 2*K*C (two weight matrices) + 2*K (BN gamma, beta) + 2 (scales).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import KDLabError
from kdlab.registry import LAYERS

DEFAULT_TEMPLATES = 4096  # K_penult in every config of the paper ("directly comparable with QuEST")


class CosineConv1x1(nn.Module):
    """``scale * <w_k / ||w_k||, x / ||x||>`` at every location of a (B, C, H, W) map: a bias-free cosine 1x1 conv
    (the authors' ``Conv2dCos``; weights drawn N(0, 2 / in) as their code does, fan-in He init). The forward only
    sees each row's direction, but under SGD with weight decay the norm sets the effective step: with N(0, 2 / out)
    the C -> K = 4096 templates (C = 64) would start ~64x shorter, so ~64x faster, and the value layer ~64x
    slower than the authors'."""

    def __init__(self, in_channels: int, out_channels: int, scale: float, learn_scale: bool = True, eps: float = 1e-12):
        super().__init__()
        self.in_channels, self.out_channels, self.eps = in_channels, out_channels, eps
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels) * math.sqrt(2.0 / in_channels))
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        xn = F.normalize(x, dim=1, eps=self.eps)
        wn = F.normalize(self.weight, dim=1, eps=self.eps).to(xn.dtype)
        return self.scale.to(xn.dtype) * F.conv2d(xn, wn[:, :, None, None])

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class LetKDLayer(nn.Module):
    """Cosine 1x1 (C -> K, scale s1) -> BN -> ReLU -> cosine 1x1 (K -> C, scale s2); output ``x + alpha * v``.

    Accepts (B, C, H, W) maps, and (B, C) or (B, C, L) features as maps of width 1 (same output shape as input).
    """

    def __init__(
        self,
        channels: int,
        templates: int,
        alpha: float = 1.0,
        scale_scores: float = 3.0,
        scale_value: float = 1.0,
        learn_scale: bool = True,
    ):
        super().__init__()
        self.channels, self.templates, self.alpha = int(channels), int(templates), float(alpha)
        self.scores = CosineConv1x1(self.channels, self.templates, scale_scores, learn_scale)
        self.bn = nn.BatchNorm2d(self.templates)
        self.relu = nn.ReLU()
        self.value = CosineConv1x1(self.templates, self.channels, scale_value, learn_scale)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if x.dim() not in (2, 3, 4):
            raise KDLabError(f"letkd layer: expected a (B, C[, H[, W]]) input, got shape {tuple(shape)}")
        x4 = x if x.dim() == 4 else x.reshape(shape[0], shape[1], -1, 1)
        if x4.shape[1] != self.channels:
            raise KDLabError(f"letkd layer built for {self.channels} channels got {x4.shape[1]}")
        a = self.scores(x4)
        if self.alpha == 0.0:
            return x  # the student is untouched; the scores were still computed (and captured) for the KL term
        v = self.value(self.relu(self.bn(a)))
        return (x4 + self.alpha * v).reshape(shape)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, templates={self.templates}, alpha={self.alpha}"


@LAYERS.register(
    "letkd",
    description="letKD layer: cosine templates -> BN-ReLU -> cosine value, x + alpha*v",
    paper="Gorgun, Gurbuz, Alatan, BMVC 2023",
)
def letkd(
    *,
    channels: int,
    num_classes: int,
    templates: int | None = None,
    templates_per_class: int | None = None,
    alpha: float = 1.0,
    scale_scores: float = 3.0,
    scale_value: float = 1.0,
    learn_scale: bool = True,
    **extra: Any,
) -> nn.Module:
    """``templates``: K (4096 for the penultimate layer in the paper); or ``templates_per_class``: K = that times
    the number of classes (8 for the intermediate layer of letKD-2: K = 800 on CIFAR-100). ``alpha``: the forward
    scale of the value (1 everywhere in the paper except RN50 -> MobileNetV2). ``scale_scores`` / ``scale_value``:
    the initial s1 / s2 (3.0 / 1.0), learnable unless ``learn_scale`` is false."""
    if extra:
        raise KDLabError(
            f"letkd layer: unknown argument(s) {', '.join(sorted(extra))}; accepted: templates, "
            "templates_per_class, alpha, scale_scores, scale_value, learn_scale"
        )
    if templates is not None and templates_per_class is not None:
        raise KDLabError("letkd layer: give templates or templates_per_class, not both")
    k = (
        int(templates_per_class) * int(num_classes)
        if templates_per_class is not None
        else (DEFAULT_TEMPLATES if templates is None else int(templates))
    )
    if k < 1:
        raise KDLabError(f"letkd layer: the number of templates must be positive, got {k}")
    return LetKDLayer(
        channels, k, alpha=alpha, scale_scores=scale_scores, scale_value=scale_value, learn_scale=learn_scale
    )
