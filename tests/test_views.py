"""Batched augmentation views: crop, flip, crop_flip, normalize — checked against independent computations."""

from __future__ import annotations

import pydantic
import pytest
import torch

from kdlab.registry import VIEWS
from kdlab.views import Crop, CropFlip, Flip, normalize


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct_images(n: int, c: int = 2, h: int = 6, w: int = 5) -> torch.Tensor:
    # every pixel value is unique and non-zero, so a crop window identifies its offset
    return (torch.arange(n * c * h * w, dtype=torch.float32) + 1).reshape(n, c, h, w)


def _padded_reference(img: torch.Tensor, p: int) -> torch.Tensor:
    c, h, w = img.shape
    out = torch.zeros(c, h + 2 * p, w + 2 * p)
    out[:, p : p + h, p : p + w] = img
    return out


def _matching_offsets(img: torch.Tensor, crop: torch.Tensor, p: int) -> list[tuple[int, int]]:
    padded = _padded_reference(img, p)
    h, w = img.shape[1:]
    return [
        (dy, dx)
        for dy in range(2 * p + 1)
        for dx in range(2 * p + 1)
        if torch.equal(padded[:, dy : dy + h, dx : dx + w], crop)
    ]


def test_registered_and_params():
    assert {"crop", "flip", "crop_flip"} <= set(VIEWS.names())
    cls = VIEWS.get("crop")
    assert cls is Crop and cls.Params().padding == 4
    assert CropFlip.Params().padding == 4 and CropFlip.Params().p == 0.5 and Flip.Params().p == 0.5
    with pytest.raises(pydantic.ValidationError):
        Crop.Params(padding=4, paddding=3)
    with pytest.raises(pydantic.ValidationError):
        Flip.Params(p=1.5)
    assert Crop({"padding": 2}).p.padding == 2


def test_crop_shape_and_padding_zero_identity():
    x = torch.rand(7, 3, 9, 11)
    assert Crop(Crop.Params(padding=4))(x, _gen(0)).shape == x.shape
    assert torch.equal(Crop(Crop.Params(padding=0))(x, _gen(0)), x)


def test_crop_each_sample_is_a_slice_of_its_padded_image():
    p = 2
    x = _distinct_images(40)
    out = Crop(Crop.Params(padding=p))(x, _gen(1))
    offsets = set()
    for i in range(len(x)):
        found = _matching_offsets(x[i], out[i], p)
        assert len(found) == 1, f"sample {i}: crop is not a unique window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 10  # one random offset per sample, not one per batch


def test_crop_matches_drawn_offsets_and_signals():
    p = 3
    x = _distinct_images(12)
    view = Crop(Crop.Params(padding=p))
    params = view.draw(x, _gen(2))
    assert params.shape == (12, 2) and params.min() >= 0 and params.max() <= 2 * p
    out = view.apply(x, params)
    assert torch.equal(out, view(x, _gen(2)))
    for i in range(len(x)):
        assert _matching_offsets(x[i], out[i], p) == [tuple(params[i].tolist())]
    # 1-D signals N×C×L: a shifted window with zeros
    s = torch.arange(1, 1 + 4 * 10, dtype=torch.float32).reshape(4, 1, 10)
    off = torch.tensor([[0], [3], [6], [5]])
    got = Crop(Crop.Params(padding=3)).apply(s, off)
    for i, o in enumerate(off[:, 0].tolist()):
        ref = torch.cat([torch.zeros(1, 3), s[i], torch.zeros(1, 3)], dim=1)[:, o : o + 10]
        assert torch.equal(got[i], ref)


def test_flip_samples_and_fraction():
    x = torch.rand(4000, 1, 2, 3)
    out = Flip(Flip.Params())(x, _gen(3))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each sample is exactly either flipped or untouched
    assert 0.46 < flipped.float().mean().item() < 0.54
    assert torch.equal(Flip(Flip.Params(p=1.0))(x, _gen(0)), x.flip(-1))
    assert torch.equal(Flip(Flip.Params(p=0.0))(x, _gen(0)), x)


def test_crop_flip_is_crop_then_flip():
    p = 1
    x = _distinct_images(30, h=4, w=4)
    view = CropFlip(CropFlip.Params(padding=p))
    params = view.draw(x, _gen(4))
    out = view.apply(x, params)
    assert out.shape == x.shape and params.shape == (30, 3)
    for i in range(len(x)):
        unflipped = out[i].flip(-1) if params[i, 2] else out[i]
        assert _matching_offsets(x[i], unflipped, p) == [tuple(params[i, :2].tolist())]
    assert 0 < params[:, 2].sum() < 30


@pytest.mark.parametrize("name", ["crop", "flip", "crop_flip"])
def test_determinism_with_seeded_generator(name):
    cls = VIEWS.get(name)
    view = cls(cls.Params())
    x = torch.rand(64, 3, 8, 8)
    a, b = view(x, _gen(7)), view(x, _gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, view(x, _gen(8)))
    assert torch.equal(x, x.clone())  # input untouched
    g = _gen(9)
    assert not torch.equal(view(x, g), view(x, g))  # the generator advances


def test_normalize():
    x = torch.rand(5, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(x, mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c])
    assert torch.allclose(normalize(x, (0.5,), (0.5,)), x * 2 - 1)
    sig = torch.rand(2, 1, 40)
    assert torch.allclose(normalize(sig, (1.0,), (2.0,)), (sig - 1) / 2)
