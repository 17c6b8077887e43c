"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), CIFAR variant as in CRD / RepDistiller ``models/wrn.py``.

Pre-activation BasicBlocks, depth ``6n + 4``, widths ``(16, 16k, 32k, 64k)``, optional dropout between
the two convs of a block (kwarg ``dropout``, default 0). Global pooling is adaptive.

Module paths (for forward hooks):

- ``conv1``                     stem output
- ``block1``, ``block2``, ``block3``   stage ends; resolution /1, /2, /4. These are *pre-activation*
  sums (the blocks are pre-activation); their BN'd pre-ReLU views are ``block2.0.bn1``, ``block3.0.bn1``
  and ``bn1`` (the inputs of the next BN-ReLU, as RepDistiller's ``get_bn_before_relu``)
- ``bn1``, ``relu``             final BN and ReLU after ``block3``
- ``flatten``                   penultimate features ``(N, 64k)`` == the input of ``fc``
- ``fc``                        logits
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models._common import image_channels, init_fan_out, no_extra_kwargs
from kdlab.registry import MODELS

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with identity or 1x1-conv shortcut (pre-activation)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # As in the reference implementation: a projection shortcut reads the pre-activated input.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...); got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        cin = widths[0]
        stages = []
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [
                WideBasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1, dropout) for i in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        init_fan_out(self)
        nn.init.zeros_(self.fc.bias)
        # Portable tap aliases (kdlab.capture). The blocks are pre-activation, so a stage's post-ReLU end is the
        # BN-ReLU that opens the next stage (``block2.0.relu1``, ``block3.0.relu1``, the final ``relu``) and its
        # pre-ReLU end that BN's output (RepDistiller ``get_bn_before_relu``).
        self.kdlab_taps: dict[str, str] = {
            "stem": "conv1",  # the stem conv (pre-activation net: RepDistiller feat[0] is its raw output)
            "stage1": "block2.0.relu1",
            "stage2": "block3.0.relu1",
            "stage3": "relu",
            "pre_stage1": "block2.0.bn1",
            "pre_stage2": "block3.0.bn1",
            "pre_stage3": "bn1",
            "penultimate": "flatten",
            "last": "relu",
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.flatten(self.avgpool(x)))


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def build(*, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, **kwargs) -> nn.Module:
        no_extra_kwargs(name, kwargs, ("dropout",))
        return WideResNet(depth, widen, num_classes, image_channels(input_shape, name), float(dropout))

    build.__name__ = name
    build.__doc__ = f"Wide ResNet WRN-{depth}-{widen} (CIFAR); kwarg dropout (default 0)."
    MODELS.register(name, description=build.__doc__, paper="Zagoruyko & Komodakis 2016")(build)


for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_d, _k)
