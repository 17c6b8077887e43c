"""The data contract every dataset builder returns.

A dataset is held as tensors: ``x`` in raw scale (images as float32 in [0, 1], shape N×C×H×W; signals
N×C×L; tabular N×D) and ``y`` as int64 class indices. Normalisation with ``mean``/``std`` happens on the
device after the augmentation views, so crops pad with black, as in the CIFAR literature.
Large folder datasets that cannot sit in memory return a ``StreamSplit`` instead (see ``loader.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)
    notes: str = ""
    val: Split | None = None  # carved from train by the recipe's data.val_fraction (model selection only)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape, e.g. (1, 28, 28)."""
        return tuple(self.train.x.shape[1:])
