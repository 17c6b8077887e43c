"""Batch loaders the training engine iterates, and the ``StreamSplit`` for data too large for memory.

Both loaders share one interface::

    loader = make_loader(split, batch_size=128, shuffle=True, drop_last=True, device="cuda", seed=0)
    len(loader)                                  # batches per epoch
    for x, y, idx in loader.iter_epoch(epoch):   # x float32 raw scale, y int64, idx int64 (all on `device`)
        ...

The order of an epoch comes from a fresh CPU ``torch.Generator`` seeded by ``(seed, epoch)`` alone, so any
epoch can be replayed on its own (bitwise resume from a checkpoint without replaying earlier epochs).
``idx`` are the sample indices within the split (for per-sample caches such as stored teacher logits).
A shuffled (training) epoch never ends with a batch of one sample: BatchNorm cannot train on it (a
traceback mid-epoch), so that one sample, a different one each epoch, sits the epoch out.

Data-parallel sharding (``rank``/``world``, used under ``torchrun``): every rank draws the same
``(seed, epoch)`` order and keeps the contiguous chunk ``order[rank * m:(rank + 1) * m]`` with
``m = n // world``; the last ``n % world`` samples of that epoch's order are dropped (a different set each
shuffled epoch), so every rank runs the same number of steps. ``world=1`` is the whole order, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from kdlab.data.base import Split

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, epoch)`` (mixed with numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order (int64, CPU) of one epoch: a permutation drawn from ``epoch_generator`` or ``arange``."""
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    return torch.randperm(n, generator=epoch_generator(seed, epoch), dtype=torch.int64)


def _batches(order: torch.Tensor, batch_size: int, drop_last: bool, drop_single: bool = False) -> list[torch.Tensor]:
    chunks = list(torch.split(order, batch_size))
    if chunks and (drop_last and len(chunks[-1]) < batch_size or _single(len(order), batch_size, drop_single)):
        chunks.pop()
    return chunks


def _single(n: int, batch_size: int, drop_single: bool) -> bool:
    """True when the last batch would hold one sample of a larger batch size and is to be dropped."""
    return drop_single and batch_size > 1 and n > 1 and n % batch_size == 1


def _num_batches(n: int, batch_size: int, drop_last: bool, drop_single: bool = False) -> int:
    return n // batch_size if drop_last or _single(n, batch_size, drop_single) else math.ceil(n / batch_size)


def _check(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class _EpochBatches:
    """What every loader shares: batch geometry and the (seed, epoch)-determined sample order."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        device: str | torch.device,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        _check(batch_size)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank} world={world}")
        self.total_samples = int(num_samples)
        self.rank, self.world = int(rank), int(world)
        self.num_samples = self.total_samples // self.world  # samples this rank sees per epoch
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.seed = int(seed)

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last, self.shuffle)

    def full_order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order over the whole split (CPU int64), the same on every rank."""
        return epoch_order(self.total_samples, self.seed, epoch, self.shuffle)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's share of the epoch's sample order (CPU int64): all of it when ``world == 1``."""
        order = self.full_order(epoch)
        if self.world == 1:
            return order
        m = self.num_samples
        return order[self.rank * m : (self.rank + 1) * m]


# ------------------------------------------------------------------------------------------------ in memory


class TensorLoader(_EpochBatches):
    """Batches of an in-memory :class:`~kdlab.data.base.Split`.

    ``resident=True`` moves the whole split to ``device`` once (at construction), so batching is pure device
    indexing; ``resident=False`` keeps it in host memory and copies each batch. x is cast to float32 and y to
    int64 if they are not already.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        resident: bool = True,
        rank: int = 0,
        world: int = 1,
    ):
        super().__init__(len(split.y), batch_size, shuffle, drop_last, device, seed, rank, world)
        self.resident = resident
        # Floating inputs become float32; integer inputs (token ids of text datasets) stay integers.
        x = split.x.float() if split.x.is_floating_point() and split.x.dtype != torch.float32 else split.x
        y = split.y if split.y.dtype == torch.int64 else split.y.long()
        if resident:
            x, y = x.to(self.device), y.to(self.device)
        self.x, self.y = x, y

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        order = self.order(epoch)
        if self.resident:
            order = order.to(self.x.device)
        for idx in _batches(order, self.batch_size, self.drop_last, self.shuffle):
            x, y = self.x[idx], self.y[idx]
            if not self.resident:
                x, y, idx = x.to(self.device), y.to(self.device), idx.to(self.device)
            yield x, y, idx


# ------------------------------------------------------------------------------------------------ streaming


class LazyImages:
    """Stand-in for ``x`` of a :class:`StreamSplit`: has ``shape``/``dtype``/``len``; indexing decodes files."""

    dtype = torch.float32

    def __init__(self, split: StreamSplit):
        self._split = split

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._split), *self._split.sample_shape))

    def __len__(self) -> int:
        return len(self._split)

    def __getitem__(self, idx: int | slice | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(idx, int):
            return self._split.get_batch(torch.tensor([idx]))[0][0]
        if isinstance(idx, slice):
            idx = torch.arange(len(self._split))[idx]
        return self._split.get_batch(torch.as_tensor(idx, dtype=torch.int64))[0]


class StreamSplit:
    """A split whose samples are loaded on demand from a map-style ``torch.utils.data.Dataset``.

    ``dataset[i]`` must return ``(uint8 tensor C×H×W, int label)`` with the same shape for every ``i``; ``y``
    holds all labels (int64) so that stratification and class counts need no decoding. ``x`` is a
    :class:`LazyImages` (``x.shape`` works, ``x[idx]`` decodes); ``get_batch(idx)`` returns ``(x float32 in
    [0, 1], y int64)`` synchronously; :class:`StreamLoader` fetches batches with DataLoader workers instead.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, y: torch.Tensor, sample_shape: Sequence[int]):
        self.dataset = dataset
        self.y = torch.as_tensor(y, dtype=torch.int64)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        if len(dataset) != len(self.y):  # type: ignore[arg-type]
            raise ValueError(f"dataset has {len(dataset)} samples but y has {len(self.y)}")  # type: ignore[arg-type]
        self.x = LazyImages(self)

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.dataset[int(i)] for i in idx]
        x = torch.stack([torch.as_tensor(im) for im, _ in items]).float().div_(255.0)
        return x, torch.as_tensor([int(lab) for _, lab in items], dtype=torch.int64)

    def subset(self, idx: torch.Tensor) -> StreamSplit:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        return StreamSplit(torch.utils.data.Subset(self.dataset, idx.tolist()), self.y[idx], self.sample_shape)


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([torch.as_tensor(im) for im, _ in items])
    return x, torch.as_tensor([int(lab) for _, lab in items], dtype=torch.int64)


class StreamLoader(_EpochBatches):
    """Batches of a :class:`StreamSplit`, decoded by ``num_workers`` DataLoader worker processes.

    Same interface and epoch order as :class:`TensorLoader`. Batches travel as uint8 and are converted to
    float32 in [0, 1] on ``device`` (4x less host-to-device traffic). ``num_workers=0`` decodes in-process.
    Decoding is deterministic, so worker seeding does not matter.
    """

    def __init__(
        self,
        split: StreamSplit,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        rank: int = 0,
        world: int = 1,
    ):
        super().__init__(len(split), batch_size, shuffle, drop_last, device, seed, rank, world)
        self.split = split
        self.num_workers = int(num_workers)
        self.prefetch_factor = prefetch_factor

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        batches = _batches(self.order(epoch), self.batch_size, self.drop_last, self.shuffle)
        kwargs = {}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
        dl = torch.utils.data.DataLoader(
            self.split.dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            **kwargs,
        )
        for idx, (x, y) in zip(batches, dl):
            x = x.to(self.device, non_blocking=True).float().div_(255.0)
            yield x, y.to(self.device, non_blocking=True), idx.to(self.device)


def make_loader(
    split: Split | StreamSplit,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    resident: bool = True,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> TensorLoader | StreamLoader:
    """The loader for ``split``: :class:`StreamLoader` for a :class:`StreamSplit`, else :class:`TensorLoader`.

    ``resident`` only applies to in-memory splits and ``num_workers`` only to streaming ones; ``rank`` and
    ``world`` shard every epoch's order for data-parallel training (module docstring).
    """
    if isinstance(split, StreamSplit):
        return StreamLoader(
            split,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            device=device,
            seed=seed,
            num_workers=num_workers,
            rank=rank,
            world=world,
        )
    return TensorLoader(
        split,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        device=device,
        seed=seed,
        resident=resident,
        rank=rank,
        world=world,
    )
