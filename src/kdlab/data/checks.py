"""Data checks run once before training, so that bad data is a one-line error, not a silent wrong run.

Each check names the split (and the sample or channel) at fault: labels outside ``[0, num_classes)``,
non-finite inputs (NaN/inf would otherwise surface epochs later as a NaN loss), a constant input channel
(std 0: normalising by it divides by zero), and a training split that yields no step at all
(``drop_last`` with a batch larger than the split). ``run_recipe`` calls :func:`check_dataset` from
``build_data``; the checks read the data in chunks, so they cost one pass over memory-resident splits and
only the labels of streamed ones.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlab.errors import KDLabError

CHUNK = 4096  # samples per chunk of the non-finite scan (bounded extra memory)


def _splits(dataset: Any) -> list[tuple[str, Any]]:
    return [(name, s) for name in ("train", "val", "test") if (s := getattr(dataset, name, None)) is not None]


def check_labels(name: str, y: torch.Tensor, num_classes: int) -> None:
    y = torch.as_tensor(y).reshape(-1)
    if y.is_floating_point():
        raise KDLabError(f"data: the {name} split's labels are floats ({y.dtype}); labels are class indices")
    bad = ((y < 0) | (y >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise KDLabError(
            f"data: the {name} split has label {int(y[i])} at sample {i} "
            f"({len(bad)} such); labels must be in [0, {num_classes})"
        )


def check_finite(name: str, x: Any) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return  # token ids, or a streamed split decoded from uint8 files: cannot hold NaN
    for start in range(0, len(x), CHUNK):
        chunk = x[start : start + CHUNK].reshape(min(CHUNK, len(x) - start), -1)
        bad = (~torch.isfinite(chunk)).any(1).nonzero()
        if len(bad):
            i = start + int(bad[0, 0])
            n = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum())
            raise KDLabError(
                f"data: the {name} split has a NaN or infinite input at sample {i} ({n} samples "
                "affected); clean or drop them before training"
            )


def check_channels(dataset: Any) -> None:
    std = list(getattr(dataset, "std", ()) or ())
    zero = [c for c, s in enumerate(std) if not s > 0]
    if zero:
        raise KDLabError(
            f"data: input channel {zero[0]} is constant on the train split (std {std[zero[0]]}), so "
            "normalising by it divides by zero; drop that channel or give it some variation"
        )


def check_steps(n_train: int, batch_size: int, drop_last: bool, world: int = 1) -> None:
    per_rank = n_train // max(1, world)
    if drop_last and batch_size > per_rank:
        raise KDLabError(
            f"data.batch_size: {batch_size} is larger than the {per_rank} training samples"
            f"{' per process' if world > 1 else ''} and data.drop_last drops that only batch, so no "
            "step would be trained; lower batch_size or set drop_last: false"
        )
    if per_rank == 0:
        raise KDLabError("data: the train split is empty")


def check_dataset(dataset: Any, *, batch_size: int, drop_last: bool, world: int = 1) -> None:
    """Every check above, on every split the run will read; raises the first problem found."""
    for name, split in _splits(dataset):
        check_labels(name, split.y, dataset.num_classes)
        check_finite(name, split.x)
    check_channels(dataset)
    check_steps(len(dataset.train), batch_size, drop_last, world)
