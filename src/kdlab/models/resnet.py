"""CIFAR ResNets (He et al. 2016) as used by the KD literature (CRD / RepDistiller ``models/resnet.py``).

Three stages of BasicBlocks, depth ``6n + 2``; widths ``(16, 16, 32, 64)`` for resnet8..resnet110 and
``(32, 64, 128, 256)`` for the "x4" variants. The stem is a stride-1 3x3 conv (no max-pool); the average
pool is adaptive, so any resolution works (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR).

Module paths (for forward hooks):

- ``relu``                      stem output (post-ReLU), full resolution
- ``layer1``, ``layer2``, ``layer3``   stage ends (post-ReLU); resolution /1, /2, /4
- ``layerK.<last>.preact``      stage end *before* the final ReLU (residual sum), e.g. ``layer3.4.preact``
- ``layerK.<i>.bn2``            last BN of a block, before the residual add
- ``flatten``                   penultimate features, shape ``(N, C)`` == the input of ``fc``
- ``fc``                        logits

ReLUs are separate, non-inplace modules, so a hook on a BN or ``preact`` sees pre-ReLU responses.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models._common import image_channels, init_fan_out, no_extra_kwargs
from kdlab.registry import MODELS

__all__ = ["BasicBlock", "CifarResNet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus identity or 1x1-conv/BN projection shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.preact = nn.Identity()  # hook point: residual sum before the last ReLU
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(self.preact(out + shortcut))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: stem conv, three BasicBlock stages (strides 1, 2, 2), global pool, fc."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...); got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        stages = []
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [BasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        init_fan_out(self)
        # Portable tap aliases (kdlab.capture): stage ends post-ReLU, the residual sum before the last ReLU.
        self.kdlab_taps: dict[str, str] = {
            "stem": "relu",  # the stem conv-BN-ReLU output (RepDistiller feat[0])
            **{f"stage{k}": f"layer{k}" for k in (1, 2, 3)},
            **{f"pre_stage{k}": f"layer{k}.{n - 1}.preact" for k in (1, 2, 3)},
            "penultimate": "flatten",
            "last": "layer3",
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: tuple[int, int, int, int], note: str) -> None:
    def build(*, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
        no_extra_kwargs(name, kwargs)
        return CifarResNet(depth, widths, num_classes, image_channels(input_shape, name))

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}{note}."
    MODELS.register(name, description=build.__doc__, paper="He et al. 2016")(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, _SMALL, ", widths 16-32-64")
_register("resnet8x4", 8, _X4, ", widths x4 (64-128-256), as in CRD (Tian et al. 2020)")
_register("resnet32x4", 32, _X4, ", widths x4 (64-128-256), as in CRD (Tian et al. 2020)")
