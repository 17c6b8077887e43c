"""Small models for quick studies: an MLP for any input, a small 2-D CNN, a small 1-D CNN.

``mlp`` (any ``input_shape``; flattens): kwargs ``hidden`` (list of widths, default ``[256]``),
``dropout`` (default 0). Module paths: ``flatten``, ``hidden.<i>`` (post-activation output of hidden
layer i; ``hidden.<i>.linear`` is its pre-ReLU response), ``hidden`` == penultimate == input of ``fc``.

``smallcnn`` (``(C, H, W)``): conv32-pool-conv64-pool-fc128-fc, each conv followed by BN and ReLU.
kwargs ``width`` (channel/width multiplier, default 1.0; a wider teacher is ``width=2``), ``pool_size``
(adaptive average pool to ``pool_size x pool_size`` before fc1, default 2, which makes the model
resolution-agnostic), ``batch_norm`` (default True), ``dropout`` (before ``fc``, default 0).
Module paths: ``relu1``, ``relu2`` stage ends (``bn1``, ``bn2`` pre-ReLU), ``relu3`` penultimate
``(N, 128*width)`` == the input of ``fc`` (via ``dropout``).

``cnn1d`` (``(C, L)``, or ``(L,)`` which is read as one channel): three conv1d-BN-ReLU layers (kernel 5;
strides 1, 2, 2), adaptive average pool to ``pool_size`` positions, linear classifier. kwargs
``channels`` (default ``[32, 64, 64]``), ``kernel_size`` (5), ``pool_size`` (default 4).
Module paths: ``layer1`` .. ``layerN`` stage ends (``layerK.bn`` pre-ReLU), ``flatten`` penultimate
== the input of ``fc``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from kdlab.errors import KDLabError
from kdlab.models._common import image_channels, no_extra_kwargs
from kdlab.registry import MODELS

__all__ = ["MLP", "SmallCNN", "CNN1d"]


def _positive(name: str, key: str, value: float) -> None:
    if not value > 0:
        raise KDLabError(f"model {name!r}: {key} must be positive; got {value!r}")


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256,), dropout: float = 0.0):
        super().__init__()
        self.flatten = nn.Flatten(1)
        layers = []
        cin = in_features
        for width in hidden:
            layers.append(
                nn.Sequential(
                    OrderedDict(linear=nn.Linear(cin, int(width)), relu=nn.ReLU(), dropout=nn.Dropout(dropout))
                )
            )
            cin = int(width)
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        # Portable tap aliases (kdlab.capture): one "stage" per hidden layer (vectors, no spatial size).
        nh = len(layers)
        self.kdlab_taps: dict[str, str] = {
            **{f"stage{k}": f"hidden.{k - 1}" for k in range(1, nh + 1)},
            **{f"pre_stage{k}": f"hidden.{k - 1}.linear" for k in range(1, nh + 1)},
            "penultimate": "fc:in",
            **({"last": f"hidden.{nh - 1}"} if nh else {}),
        }

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(self.flatten(x)))


class SmallCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: float = 1.0,
        pool_size: int = 2,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        c1, c2, h = (max(1, round(c * width)) for c in (32, 64, 128))
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(c1) if batch_norm else nn.Identity()
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, ceil_mode=True)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(c2) if batch_norm else nn.Identity()
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(c2 * pool_size * pool_size, h)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(h, num_classes)
        # Portable tap aliases (kdlab.capture): the two conv stages (before their max-pool), pre-ReLU at bn1/bn2.
        self.kdlab_taps: dict[str, str] = {
            "stage1": "relu1",
            "stage2": "relu2",
            "pre_stage1": "bn1",
            "pre_stage2": "bn2",
            "penultimate": "fc:in",
            "last": "relu2",
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(self.avgpool(x))))
        return self.fc(self.dropout(x))


class CNN1d(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 64),
        kernel_size: int = 5,
        pool_size: int = 4,
        add_channel_dim: bool = False,
    ):
        super().__init__()
        self.add_channel_dim = add_channel_dim
        cin = in_channels
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            conv = nn.Conv1d(cin, int(c), kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
            layer = nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm1d(int(c)), relu=nn.ReLU()))
            self.add_module(f"layer{i + 1}", layer)
            cin = int(c)
        self.num_layers = len(channels)
        self.avgpool = nn.AdaptiveAvgPool1d(pool_size)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin * pool_size, num_classes)
        # Portable tap aliases (kdlab.capture): each conv-BN-ReLU layer is a stage; ``layerK.bn`` is pre-ReLU.
        nl = len(channels)
        self.kdlab_taps: dict[str, str] = {
            **{f"stage{k}": f"layer{k}" for k in range(1, nl + 1)},
            **{f"pre_stage{k}": f"layer{k}.bn" for k in range(1, nl + 1)},
            "penultimate": "flatten",
            "last": f"layer{nl}",
        }

    def forward(self, x: Tensor) -> Tensor:
        if self.add_channel_dim:
            x = x.unsqueeze(1)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


@MODELS.register("mlp", description="Multi-layer perceptron on the flattened input; kwargs hidden, dropout.")
def mlp(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: Sequence[int] = (256,), dropout: float = 0.0, **kwargs
) -> nn.Module:
    no_extra_kwargs("mlp", kwargs, ("hidden", "dropout"))
    if isinstance(hidden, int):
        hidden = [hidden]
    for w in hidden:
        _positive("mlp", "hidden widths", w)
    return MLP(math.prod(input_shape), num_classes, list(hidden), float(dropout))


@MODELS.register(
    "smallcnn",
    description="Small CNN conv32-pool-conv64-pool-fc128-fc; kwargs width (multiplier), pool_size, batch_norm, "
    "dropout.",
)
def smallcnn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    width: float = 1.0,
    pool_size: int = 2,
    batch_norm: bool = True,
    dropout: float = 0.0,
    **kwargs,
) -> nn.Module:
    no_extra_kwargs("smallcnn", kwargs, ("width", "pool_size", "batch_norm", "dropout"))
    _positive("smallcnn", "width", width)
    _positive("smallcnn", "pool_size", pool_size)
    in_channels = image_channels(input_shape, "smallcnn")
    return SmallCNN(num_classes, in_channels, float(width), int(pool_size), bool(batch_norm), float(dropout))


@MODELS.register(
    "cnn1d",
    description="Small 1-D CNN for (C, L) signals such as MNIST-1D; kwargs channels, kernel_size, pool_size.",
)
def cnn1d(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: Sequence[int] = (32, 64, 64),
    kernel_size: int = 5,
    pool_size: int = 4,
    **kwargs,
) -> nn.Module:
    no_extra_kwargs("cnn1d", kwargs, ("channels", "kernel_size", "pool_size"))
    shape = tuple(input_shape)
    if len(shape) not in (1, 2):
        raise KDLabError(f"model 'cnn1d' needs input_shape (C, L) or (L,); got {shape!r}")
    if not channels:
        raise KDLabError("model 'cnn1d': channels must list at least one layer width")
    _positive("cnn1d", "pool_size", pool_size)
    in_channels = 1 if len(shape) == 1 else int(shape[0])
    return CNN1d(num_classes, in_channels, list(channels), int(kernel_size), int(pool_size), len(shape) == 1)
