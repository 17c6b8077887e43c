"""CIFAR VGGs (Simonyan & Zisserman 2015) as in CRD / RepDistiller ``models/vgg.py``.

The CIFAR variant has no fully connected hidden layers: five conv blocks, then global average pooling and
one linear classifier. As in RepDistiller's ``model_dict``, the registered names use batch norm
(``vgg13`` == RepDistiller ``vgg13_bn``); pass ``batch_norm=False`` for the plain variant.

Spatial schedule: max-pool after blocks 0, 1 and 2; after block 3 only for inputs of 64 px or more
(RepDistiller pools there only for 64x64 inputs); global average pool after block 4. Pools use
``ceil_mode=True`` so that small inputs (8x8 digits) never shrink to zero size; for even sizes
(32x32 CIFAR) this is identical to the reference.

Module paths (for forward hooks):

- ``block0`` .. ``block4``      stage ends *before* ReLU (each block ends in a BN, or a conv without BN)
- ``relu0`` .. ``relu4``        the same stage ends after ReLU; resolution /1, /2, /4, /8, /8 at 32 px
- ``flatten``                   penultimate features ``(N, 512)`` == the input of ``fc``
- ``fc``                        logits
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.models._common import image_channels, init_fan_out, no_extra_kwargs
from kdlab.registry import MODELS

__all__ = ["CifarVGG", "CONFIGS"]

# Output channels of each conv, per block (RepDistiller configs 'S', 'A', 'B', 'D', 'E'). The names keep
# the ImageNet depths, which count three FC layers; the CIFAR variant has one.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(cin: int, widths: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Conv2d(cin, w, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU())
        cin = w
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is the separate ``reluK`` module


class CifarVGG(nn.Module):
    def __init__(
        self,
        cfg: tuple[tuple[int, ...], ...],
        num_classes: int,
        in_channels: int = 3,
        batch_norm: bool = True,
    ):
        super().__init__()
        cin = in_channels
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(cin, widths, batch_norm))
            setattr(self, f"relu{i}", nn.ReLU())
            cin = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        init_fan_out(self, linear_std=0.01)
        # Portable tap aliases (kdlab.capture). As in RepDistiller's feature list, block 0 counts as the stem
        # (like the ResNet stem), so ``stage1..stage4`` are ``relu1..relu4`` (RepDistiller feat[1..4]).
        nb = len(cfg)
        self.kdlab_taps: dict[str, str] = {
            "stem": "relu0",  # block 0 after ReLU, before its pool (RepDistiller feat[0])
            **{f"stage{k}": f"relu{k}" for k in range(1, nb)},
            **{f"pre_stage{k}": f"block{k}" for k in range(1, nb)},
            "penultimate": "flatten",
            "last": f"relu{nb - 1}",
        }

    def forward(self, x: Tensor) -> Tensor:
        big = x.shape[-2] >= 64
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if big:
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.fc(self.flatten(self.avgpool(x)))


def _register(name: str) -> None:
    cfg = CONFIGS[name]

    def build(*, num_classes: int, input_shape: tuple[int, ...], batch_norm: bool = True, **kwargs) -> nn.Module:
        no_extra_kwargs(name, kwargs, ("batch_norm",))
        return CifarVGG(cfg, num_classes, image_channels(input_shape, name), bool(batch_norm))

    build.__name__ = name
    build.__doc__ = f"CIFAR {name.upper()} with batch norm, global pool and one linear layer (RepDistiller {name}_bn)."
    MODELS.register(name, description=build.__doc__, paper="Simonyan & Zisserman 2015")(build)


for _name in CONFIGS:
    _register(_name)
