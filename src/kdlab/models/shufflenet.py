"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018), CIFAR variants of CRD / RepDistiller.

Both use a 1x1 stride-1 stem (no max-pool) and three stages that each halve the resolution; the final
pooling is adaptive.

``shufflenetv1`` (RepDistiller ``ShuffleV1``): groups 3, stage widths 240-480-960, blocks 4-8-4.
Module paths: ``relu`` (stem), ``layer1`` .. ``layer3`` stage ends (post-ReLU; resolution /2, /4, /8),
``layerK.<last>.preact`` the same before the final ReLU, ``flatten`` penultimate ``(N, 960)`` == the input
of ``fc``.

``shufflenetv2`` (RepDistiller ``ShuffleV2``, net size 1): stage widths 116-232-464, blocks 3-7-3 after
a down-sampling block each, then a 1x1 conv to 1024. Module paths: ``relu`` (stem), ``layer1`` ..
``layer3`` stage ends (after channel shuffle; resolution /2, /4, /8), ``layerK.<i>.bn3`` the pre-ReLU
branch output of a unit, ``relu2`` after the final 1x1 conv, ``flatten`` penultimate ``(N, 1024)`` == the
input of ``fc``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models._common import image_channels, no_extra_kwargs
from kdlab.registry import MODELS

__all__ = ["ChannelShuffle", "ShuffleNetV1", "ShuffleNetV2"]


class ChannelShuffle(nn.Module):
    """Interleave channels across ``groups``: (N, g*c, H, W) -> view (N, g, c) -> transpose -> flatten."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# ----------------------------------------------------------------------------------------------- V1


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        g1 = 1 if cin == 24 else groups  # the first unit reads the 24-channel stem: no grouping there
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, kernel_size=1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = ChannelShuffle(g1)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, cout, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.preact = nn.Identity()
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return self.relu3(self.preact(out))


class ShuffleNetV1(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        cin = 24
        stages = []
        for width, n in zip(widths, blocks):
            # The stride-2 unit concatenates its input, so its branch produces only width - cin channels.
            units = [ShuffleV1Unit(cin, width - cin, 2, groups)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        # Portable tap aliases (kdlab.capture): stage ends post-ReLU, and the same before the final ReLU.
        self.kdlab_taps: dict[str, str] = {
            "stem": "relu",  # the stem conv-BN-ReLU (RepDistiller feat[0])
            **{f"stage{k}": f"layer{k}" for k in (1, 2, 3)},
            **{f"pre_stage{k}": f"layer{k}.{len(stages[k - 1]) - 1}.preact" for k in (1, 2, 3)},
            "penultimate": "flatten",
            "last": "layer3",
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


# ----------------------------------------------------------------------------------------------- V2


class ShuffleV2Unit(nn.Module):
    """Split channels in half; transform one half (1x1 - dw 3x3 - 1x1); concatenate; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.split = c
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        keep, x2 = x[:, : self.split], x[:, self.split :]
        out = self.relu1(self.bn1(self.conv1(x2)))
        out = self.relu3(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return self.shuffle(torch.cat([keep, out], 1))


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: two branches (dw 3x3 - 1x1 | 1x1 - dw 3x3 - 1x1), concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        # left branch
        self.conv1 = nn.Conv2d(cin, cin, kernel_size=3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        # right branch
        self.conv3 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.relu5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        blocks: tuple[int, int, int] = (3, 7, 3),
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        cin = 24
        stages = []
        for width, n in zip(widths[:3], blocks):
            # RepDistiller's V2 has one down-sampling unit *plus* n regular units per stage.
            stages.append(nn.Sequential(ShuffleV2Down(cin, width), *[ShuffleV2Unit(width) for _ in range(n)]))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(cin, widths[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        # Portable tap aliases (kdlab.capture): stage ends (concatenations of post-ReLU halves, shuffled). A
        # stage end has no single pre-ReLU point (half of it passes through untouched), so no ``pre_stageK``.
        self.kdlab_taps: dict[str, str] = {
            "stem": "relu",  # the stem conv-BN-ReLU (RepDistiller feat[0])
            **{f"stage{k}": f"layer{k}" for k in (1, 2, 3)},
            "penultimate": "flatten",
            "last": "layer3",
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@MODELS.register(
    "shufflenetv1",
    description="ShuffleNetV1 for CIFAR (groups 3, widths 240-480-960), RepDistiller 'ShuffleV1'.",
    paper="Zhang et al. 2018",
)
def shufflenetv1(*, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    no_extra_kwargs("shufflenetv1", kwargs)
    return ShuffleNetV1(num_classes, image_channels(input_shape, "shufflenetv1"))


@MODELS.register(
    "shufflenetv2",
    description="ShuffleNetV2 1.0x for CIFAR (widths 116-232-464-1024), RepDistiller 'ShuffleV2'.",
    paper="Ma et al. 2018",
)
def shufflenetv2(*, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    no_extra_kwargs("shufflenetv2", kwargs)
    return ShuffleNetV2(num_classes, image_channels(input_shape, "shufflenetv2"))
