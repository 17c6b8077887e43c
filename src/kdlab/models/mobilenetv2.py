"""MobileNetV2 (Sandler et al. 2018), the CIFAR variant of CRD / RepDistiller ``models/mobilenetv2.py``.

The registered ``mobilenetv2`` is RepDistiller's ``mobile_half``: expansion ``T = 6``, width multiplier
0.5, a stride-2 stem, 1280-channel last conv. kwargs ``width_mult`` (default 0.5) and ``expand_ratio``
(default 6) give the other members of the family. Global pooling is adaptive.

Module paths (for forward hooks):

- ``conv1``                     stem (conv-BN-ReLU, stride 2)
- ``blocks.0`` .. ``blocks.6``  the seven inverted-residual stages (channels 16..320 times ``width_mult``);
  RepDistiller's feature taps are the ends of ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6``
  (resolution /2, /4, /8, /16). Stage outputs are linear (no ReLU); ``blocks.K.<i>.conv.7`` is the last BN
- ``conv2``                     1x1 conv-BN-ReLU to 1280 channels
- ``flatten``                   penultimate features ``(N, 1280)`` == the input of ``fc``
- ``fc``                        logits
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models._common import image_channels, init_fan_out, no_extra_kwargs
from kdlab.registry import MODELS

__all__ = ["InvertedResidual", "MobileNetV2"]

# (expansion, channels, repeats, first stride); expansion None means "use expand_ratio"
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1))  # fmt: skip


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 0.5, expand_ratio: int = 6):
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        stages = []
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand_ratio if t is None else t))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(stages)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(last, num_classes)
        init_fan_out(self, linear_std=0.01)
        # Portable tap aliases (kdlab.capture): RepDistiller's feature taps, the ends of blocks 1, 2, 4, 6. The
        # stage outputs are linear bottlenecks (no ReLU); ``pre_stageK`` is the last BN of the stage's last
        # block, before the residual add (RepDistiller ``get_bn_before_relu``).
        picks = (1, 2, 4, 6)
        self.kdlab_taps: dict[str, str] = {
            "stem": "conv1",  # the stem conv-BN-ReLU (RepDistiller feat[0])
            **{f"stage{k}": f"blocks.{b}" for k, b in enumerate(picks, 1)},
            **{f"pre_stage{k}": f"blocks.{b}.{len(self.blocks[b]) - 1}.conv.7" for k, b in enumerate(picks, 1)},
            "penultimate": "flatten",
            "last": f"blocks.{picks[-1]}",
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.fc(self.flatten(self.avgpool(x)))


@MODELS.register(
    "mobilenetv2",
    description="MobileNetV2 for CIFAR, RepDistiller 'mobile_half' (T=6, width 0.5); kwargs width_mult, expand_ratio.",
    paper="Sandler et al. 2018",
)
def mobilenetv2(
    *, num_classes: int, input_shape: tuple[int, ...], width_mult: float = 0.5, expand_ratio: int = 6, **kwargs
) -> nn.Module:
    no_extra_kwargs("mobilenetv2", kwargs, ("width_mult", "expand_ratio"))
    return MobileNetV2(num_classes, image_channels(input_shape, "mobilenetv2"), float(width_mult), int(expand_ratio))
