"""The clean training batch and the pipeline that makes it: augment, normalise, memory format.

A :class:`Batch` keeps what produced it: the sample indices ``idx`` within the training split, the
augmentation parameters ``aug`` that were drawn (one int64 row per sample, the concatenation of every
``data.augment`` view's ``draw``) and ``view``, the row's number in the teacher cache's view table. That is
what makes a soft-label cache exact under random augmentation: the cache is keyed by (sample, view), and the
student is trained on exactly the image whose teacher outputs were stored.

Two ways to get a view number:
- *enumerated* (crop/flip of small images: every parameter row is listed, e.g. 81 offsets × 2 flips = 162 for
  32×32 with padding 4): parameters are drawn exactly as without a cache and the row is encoded as a mixed-radix
  number, so a cached run sees the same images as a live run with the same seed;
- *sampled* (any other augmentation, or a cache of K views per image to save build time): the cache stores K
  parameter rows per sample, drawn once; each step draws k in [0, K) per sample and applies row k.

All parameters are drawn on the generator's device (the step's generator), never per sample in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdlab.engine.devices import memory_format_for
from kdlab.recipe import Recipe
from kdlab.views.basic import normalize


@dataclass
class Batch:
    """One clean training batch, ready for the student (normalised, in the model's memory format)."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    aug: torch.Tensor | None = None  # N×k drawn augmentation parameters (None: no augmentation)
    view: torch.Tensor | None = None  # N view numbers in the teacher cache's table (None: no cache)

    def __len__(self) -> int:
        return len(self.y)


def _radices(views: list[Any], sample_shape: tuple[int, ...]) -> list[list[int]] | None:
    """Per augment view, the radix of each of its parameter columns, or None if a view is not enumerable."""
    out = []
    for v in views:
        r = getattr(v, "radices", None)
        if r is None:
            return None
        out.append(list(r(sample_shape)))
    return out


class Pipeline:
    """Augment (training only), normalise and lay out a raw batch; the same for every student and method.

    ``table``: a cache's K stored parameter rows per sample (N×K×k, *sampled* mode), or None."""

    def __init__(
        self,
        augment: list[Any],
        mean: torch.Tensor,
        std: torch.Tensor,
        sample_shape: tuple[int, ...],
        memory_format: torch.memory_format | None = None,
    ):
        self.augment = list(augment)
        self.mean, self.std = mean, std
        self.sample_shape = tuple(sample_shape)
        self.memory_format = memory_format
        self.table: torch.Tensor | None = None
        cols = _radices(self.augment, self.sample_shape)
        self.widths = [len(r) for r in cols or []]
        self.radices: list[int] | None = None if cols is None else [r for c in cols for r in c]

    # ---------------------------------------------------------------------------------------------- view table
    @property
    def enumerable(self) -> bool:
        return self.radices is not None

    @property
    def num_views(self) -> int:
        """Rows of the full enumeration (1 without augmentation)."""
        n = 1
        for r in self.radices or []:
            n *= r
        return n

    def enumerate(self) -> torch.Tensor:
        """Every parameter row (V×k int64), in view-number order (``encode`` inverts it)."""
        if self.radices is None:
            raise ValueError("this augmentation is not enumerable")
        v = torch.arange(self.num_views, dtype=torch.int64)
        cols = []
        for r in reversed(self.radices):
            cols.append(v % r)
            v = v // r
        return torch.stack(cols[::-1], 1) if cols else torch.zeros(1, 0, dtype=torch.int64)

    def encode(self, aug: torch.Tensor) -> torch.Tensor:
        """Mixed-radix view number of each parameter row (N×k → N)."""
        assert self.radices is not None
        out = torch.zeros(len(aug), dtype=torch.int64, device=aug.device)
        for j, r in enumerate(self.radices):
            out = out * r + aug[:, j]
        return out

    # ---------------------------------------------------------------------------------------------- batches
    def draw(
        self, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(parameters N×k, view numbers N) for a raw batch. Without a table the views draw in recipe order
        (the same random numbers, in the same order, as applying them one after the other)."""
        if not self.augment:
            return None, (
                torch.zeros(len(x), dtype=torch.int64, device=x.device)
                if self.table is not None or self.enumerable
                else None
            )
        if self.table is not None:
            k = torch.randint(
                0,
                self.table.shape[1],
                (len(x),),
                generator=gen,
                device=gen.device if gen is not None else torch.device("cpu"),
            )
            rows = idx.to(self.table.device), k.to(self.table.device)
            return self.table[rows].to(x.device), k.to(x.device)
        aug = torch.cat([v.draw(x, gen) for v in self.augment], 1).to(x.device)
        return aug, (self.encode(aug) if self.enumerable else None)

    def apply(self, x: torch.Tensor, aug: torch.Tensor | None) -> torch.Tensor:
        """The augment views with given parameters (raw scale)."""
        if aug is None:
            return x
        col = 0
        for v, width in zip(self.augment, self._widths(x, aug)):
            x = v.apply(x, aug[:, col : col + width])
            col += width
        return x

    def _widths(self, x: torch.Tensor, aug: torch.Tensor) -> list[int]:
        if self.widths:
            return self.widths
        return [v.draw(x[:1], None).shape[1] for v in self.augment]  # non-enumerable views: ask one draw

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (floating inputs with a declared mean/std) and lay out for the model."""
        if x.is_floating_point() and self.mean.numel():
            x = normalize(x, self.mean, self.std)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation: no augmentation."""
        return self.finish(x)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator | None) -> Batch:
        aug, view = self.draw(x, idx, gen)
        return Batch(self.finish(self.apply(x, aug)), y, idx, aug, view)

    def at(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A raw batch under given parameter rows (k columns, broadcast over the batch when 1×k): used to
        build a cache, one view at a time."""
        if rows.dim() == 1:
            rows = rows[None]
        if len(rows) == 1 and len(x) > 1:
            rows = rows.expand(len(x), -1)
        return self.finish(self.apply(x, rows if rows.shape[1] else None))


def make_pipeline(recipe: Recipe, dataset: Any, device: torch.device) -> Pipeline:
    """The clean-batch pipeline of a recipe on a device (augment views, normalisation, memory format)."""
    return Pipeline(
        [v.build() for v in recipe.data.augment],
        torch.tensor(dataset.mean, device=device),
        torch.tensor(dataset.std, device=device),
        tuple(dataset.input_shape),
        memory_format_for(recipe.train, tuple(dataset.input_shape), device),
    )
