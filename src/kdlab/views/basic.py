"""The standard batched augmentations (random crop with zero padding, horizontal flip) and ``normalize``.

Every view is a small class registered in ``kdlab.registry.VIEWS``::

    view = VIEWS.get("crop_flip")(VIEWS.get("crop_flip").Params(padding=4))   # or view = CropFlip({"padding": 4})
    x_aug = view(x, gen)      # x: a whole batch in raw scale (N×C×H×W, or N×C×L signals), on any device

Randomness comes only from ``gen`` (which may live on the CPU while ``x`` is on the GPU: numbers are drawn on
the generator's device and moved). A call is split in two public steps, ``draw(x, gen)`` → per-sample int64
parameters (N×k) and ``apply(x, params)``, so a cache can key teacher outputs by (sample, view parameters).
Nothing loops over samples in Python. ``radices(sample_shape)`` lists how many values each parameter column
can take, so the teacher cache can enumerate every view of a sample (``kdlab.engine.batch``). Views run before
``normalize``, so padding is black, as in the CIFAR literature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from kdlab.registry import VIEWS
from kdlab.schema import Strict


def generator_device(gen: torch.Generator | None) -> torch.device:
    """Where numbers drawn on ``gen`` live (the CPU for the global generator): every view draws there."""
    return gen.device if gen is not None else torch.device("cpu")


class View:
    """Base class: ``__call__(x, gen) = apply(x, draw(x, gen))``. Subclasses define ``Params``, ``draw``, ``apply``."""

    class Params(Strict):
        """No parameters; a view's own ``Params`` adds its fields (misspelt ones get a "did you mean")."""

    def __init__(self, params: BaseModel | Mapping[str, Any] | None = None):
        if params is None:
            params = self.Params()
        elif isinstance(params, Mapping):
            params = self.Params.model_validate(dict(params))
        elif not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} expects {type(self).__name__}.Params, got {type(params).__name__}")
        self.p = params

    def draw(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Per-sample parameters (int64, N×k) drawn on ``gen``'s device."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply the view with given per-sample parameters (moved to ``x.device`` if needed)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return self.apply(x, self.draw(x, gen))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.p.model_dump().items())
        return f"{type(self).__name__}({fields})"


def _spatial_dims(x: torch.Tensor) -> int:
    if x.dim() not in (3, 4):
        raise ValueError(f"views expect a batch N×C×H×W or N×C×L, got shape {tuple(x.shape)}")
    return x.dim() - 2


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad ``x`` by ``padding`` on each side of its spatial dims and take, per sample, the window of the
    original size starting at ``offsets`` (N×d, values in [0, 2·padding]; ``padding`` = no shift)."""
    if padding == 0:
        return x
    d = _spatial_dims(x)
    n, c = x.shape[:2]
    offsets = offsets.to(x.device)
    batch = torch.arange(n, device=x.device)
    chan = torch.arange(c, device=x.device)
    if d == 2:
        h, w = x.shape[2:]
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # N×H
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # N×W
        return padded[
            batch[:, None, None, None], chan[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
        ]
    length = x.shape[2]
    padded = F.pad(x, (padding, padding))
    cols = offsets[:, 0, None] + torch.arange(length, device=x.device)  # N×L
    return padded[batch[:, None, None], chan[None, :, None], cols[:, None, :]]


def random_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the last dim of the samples where ``mask`` (N or N×1, bool/0-1) is set."""
    m = mask.to(x.device).reshape(len(x), *([1] * (x.dim() - 1))).bool()
    return torch.where(m, x.flip(-1), x)


@VIEWS.register("crop", description="random crop with zero padding (one offset per sample)")
class Crop(View):
    """Random crop: zero-pad every spatial side by ``padding`` and crop back to the input size at a uniform
    random offset per sample (per spatial dim, in [0, 2·padding]). Works on images and 1-D signals."""

    class Params(View.Params):
        padding: int = Field(
            4, ge=0, description="zero padding on each spatial side; the crop shifts by up to this many pixels"
        )

    def draw(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        d = _spatial_dims(x)
        hi = 2 * self.p.padding + 1
        return torch.randint(0, hi, (len(x), d), generator=gen, device=generator_device(gen))

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return random_crop(x, params, self.p.padding)

    def radices(self, sample_shape: tuple[int, ...]) -> list[int]:
        """Values each parameter column can take (one offset per spatial dim): the cache enumerates them."""
        return [2 * self.p.padding + 1] * (len(sample_shape) - 1)


@VIEWS.register("flip", description="horizontal flip with probability p per sample")
class Flip(View):
    """Horizontal flip (reverses the last dim) of each sample independently with probability ``p``."""

    class Params(View.Params):
        p: float = Field(0.5, ge=0.0, le=1.0, description="probability that a sample is flipped")

    def draw(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(len(x), 1, generator=gen, device=generator_device(gen))
        return (u < self.p.p).long()

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return random_flip(x, params[:, 0])

    def radices(self, sample_shape: tuple[int, ...]) -> list[int]:
        return [2]


@VIEWS.register("crop_flip", description="random crop (zero padding) then horizontal flip: the CIFAR standard")
class CropFlip(View):
    """``crop`` then ``flip``: the standard CIFAR augmentation (padding 4, p 0.5). Params per sample:
    crop offsets (d columns) then the flip bit."""

    class Params(View.Params):
        padding: int = Field(4, ge=0, description="zero padding on each spatial side of the random crop")
        p: float = Field(0.5, ge=0.0, le=1.0, description="probability that a sample is flipped")

    def __init__(self, params: BaseModel | Mapping[str, Any] | None = None):
        super().__init__(params)
        self.crop = Crop(Crop.Params(padding=self.p.padding))
        self.flip = Flip(Flip.Params(p=self.p.p))

    def draw(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return torch.cat([self.crop.draw(x, gen), self.flip.draw(x, gen)], dim=1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.flip.apply(self.crop.apply(x, params[:, :-1]), params[:, -1:])

    def radices(self, sample_shape: tuple[int, ...]) -> list[int]:
        return self.crop.radices(sample_shape) + self.flip.radices(sample_shape)


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(x - mean) / std`` per channel (dim 1) of a batch N×C×...; a single value applies to every channel."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return (x - m) / s
