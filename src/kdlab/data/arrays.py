"""``arrays``: a user's own data from files, named in a recipe (``data: {name: arrays, kwargs: {...}}``).

Files: ``.npz`` (numpy archive), ``.npy`` (one array), ``.pt``/``.pth`` (a tensor or a dict of tensors, read
with ``weights_only=True``) and ``.safetensors``. Either one file holding ``x_train``, ``y_train``, ``x_test``,
``y_test`` (``path:``), or ``train:``/``test:`` each a file holding ``x``/``y`` or a pair ``[x_file, y_file]``.
Without test data, ``test_fraction`` carves a stratified held-out split (seeded by ``split_seed``).

Inputs are cast to float32 and used as stored, except uint8 images, which are divided by 255 (images in
[0, 1], the data contract of ``base.py`` and what ``kdlab predict`` does with raw uint8 images); the normalisation
``mean``/``std`` (numbers, per-channel lists, ``auto`` = computed on the training split, or ``none``) is what
the engine applies on the device, and what an exported student stores. Shapes: N×D vectors (normalised per
feature), N×C×L signals and N×C×H×W images. ``layout: auto`` makes square N×H×W arrays N×1×H×W images and moves
N×H×W×C (last dimension 1, 3 or 4) to channels-first; ``nchw``, ``nhwc`` and ``nhw`` say it explicitly. Labels are
integers 0..K-1 (``num_classes`` may declare a K larger than the labels seen).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.base import Dataset, Split
from kdlab.data.builtin import channel_stats, stratified_subset
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS


def _npz(p: Path) -> dict[str, Any]:
    with np.load(p, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _npy(p: Path) -> dict[str, Any]:
    return {"": np.load(p, allow_pickle=False)}


def _torch(p: Path) -> dict[str, Any]:
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:  # torch.save((x, y), path)
        return {"x": obj[0], "y": obj[1]}
    raise KDLabError(f"{p}: expected a tensor, a dict of tensors or an (x, y) pair; got {type(obj).__name__}")


def _safetensors(p: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(p))


READERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    ".npz": _npz,
    ".npy": _npy,
    ".pt": _torch,
    ".pth": _torch,
    ".safetensors": _safetensors,
}


def read_arrays(path: str | Path) -> dict[str, Any]:
    """Every array of one file, by key (``""`` for a file that holds a single array)."""
    p = Path(path)
    if p.suffix not in READERS:
        raise KDLabError(f"data file {p}: unsupported suffix {p.suffix!r}; use one of {', '.join(READERS)}")
    if not p.is_file():
        raise KDLabError(
            f"data file not found: {p} (relative paths are from the working directory; "
            "start them with ./ to mean the recipe file's folder)"
        )
    try:
        return READERS[p.suffix](p)
    except KDLabError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/torch/safetensors raise many types; all mean "unreadable"
        raise KDLabError(f"data file {p} cannot be read ({type(e).__name__}: {e})") from None


def _pick(arrays: dict[str, Any], key: str, where: str) -> Any:
    if key in arrays:
        return arrays[key]
    raise KDLabError(
        f"{where}: no array {key!r}; it holds {', '.join(repr(k) for k in arrays) or 'nothing'} "
        "(set x_key/y_key, or name them x_train/y_train/x_test/y_test)"
    )


def _load_xy(source: Any, x_key: str, y_key: str, what: str) -> tuple[Any, Any]:
    """``FILE`` holding x/y arrays, or ``[X_FILE, Y_FILE]`` (each one array)."""
    if isinstance(source, (list, tuple)) and len(source) == 2:
        (xs, ys) = (read_arrays(s) for s in source)
        return _only(xs, source[0]), _only(ys, source[1])
    if isinstance(source, (str, Path)):
        arrays = read_arrays(source)
        return _pick(arrays, x_key, f"{what} {source}"), _pick(arrays, y_key, f"{what} {source}")
    raise KDLabError(f"data.kwargs.{what}: expected a file or a pair [x_file, y_file]; got {source!r}")


def _only(arrays: dict[str, Any], path: Any) -> Any:
    if len(arrays) != 1:
        raise KDLabError(f"{path}: expected one array, found {', '.join(map(repr, arrays))}")
    return next(iter(arrays.values()))


def _inputs(x: Any, layout: str, where: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() < 2:
        raise KDLabError(f"{where}: inputs need a sample dimension and at least one more; got shape {tuple(t.shape)}")
    raw_uint8 = t.dtype == torch.uint8
    t = t.float()
    if layout == "nhwc" or (
        layout == "auto" and t.dim() == 4 and t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4)
    ):
        t = t.movedim(-1, 1)
    elif layout == "nhw" or (layout == "auto" and t.dim() == 3 and t.shape[1] == t.shape[2]):
        t = t.unsqueeze(1)  # square N×H×W grayscale images
    if raw_uint8 and t.dim() == 4:  # uint8 images -> [0, 1], as kdlab predict reads raw uint8 images
        t = t / 255.0
    return t.contiguous()


def _labels(y: Any, n: int, where: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1)
    if len(t) != n:
        raise KDLabError(f"{where}: {n} inputs but {len(t)} labels")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise KDLabError(f"{where}: labels must be integer class indices 0..K-1 (found non-integers)")
    if t.numel() and int(t.min()) < 0:
        raise KDLabError(f"{where}: labels must be class indices 0..K-1 (found {int(t.min())})")
    return t.long()


def _stats(value: Any, auto: tuple[float, ...], channels: int, what: str, neutral: float) -> tuple[float, ...]:
    if value == "auto":
        return auto
    if value is None or value == "none":
        return (neutral,) * channels
    vals = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise KDLabError(
            f"data.kwargs.{what}: {len(vals)} values for {channels} channels; give 1 or {channels}, "
            "or 'auto' (computed on the training split)"
        )
    return tuple(vals)


@DATASETS.register(
    "arrays",
    description="your own arrays from .npz/.npy/.pt/.safetensors files (images or "
    "vectors, integer labels), with declared or auto normalisation",
)
def arrays(
    *,
    path: str | None = None,
    train: Any = None,
    test: Any = None,
    x_key: str = "x",
    y_key: str = "y",
    test_fraction: float | None = None,
    split_seed: int = 0,
    mean: Any = "auto",
    std: Any = "auto",
    layout: str = "auto",
    num_classes: int | None = None,
    classes: list[str] | None = None,
) -> Dataset:
    """Arrays from files; see the module docstring for the file layouts and the normalisation."""
    if layout not in ("auto", "nchw", "nhwc", "nhw"):
        raise KDLabError(f"data.kwargs.layout: expected auto, nchw, nhwc or nhw; got {layout!r}")
    if (path is None) == (train is None):
        raise KDLabError(
            "dataset 'arrays': give `path:` (one file with x_train/y_train[/x_test/y_test]) or "
            "`train:` (and `test:` or `test_fraction:`)"
        )
    if path is not None:
        arrs = read_arrays(path)
        if "x_train" in arrs:
            xtr, ytr = arrs["x_train"], _pick(arrs, "y_train", str(path))
            xte, yte = (arrs["x_test"], _pick(arrs, "y_test", str(path))) if "x_test" in arrs else (None, None)
        else:
            xtr, ytr = _pick(arrs, x_key, str(path)), _pick(arrs, y_key, str(path))
            xte = yte = None
        source = str(path)
    else:
        xtr, ytr = _load_xy(train, x_key, y_key, "train")
        xte, yte = _load_xy(test, x_key, y_key, "test") if test is not None else (None, None)
        source = str(train)
    return from_arrays(
        xtr,
        ytr,
        xte,
        yte,
        test_fraction=test_fraction,
        split_seed=split_seed,
        mean=mean,
        std=std,
        layout=layout,
        num_classes=num_classes,
        classes=classes,
        source=source,
    )


def from_arrays(
    xtr: Any,
    ytr: Any,
    xte: Any = None,
    yte: Any = None,
    *,
    test_fraction: float | None = None,
    split_seed: int = 0,
    mean: Any = "auto",
    std: Any = "auto",
    layout: str = "auto",
    num_classes: int | None = None,
    classes: list[str] | None = None,
    source: str = "arrays",
    name: str = "arrays",
) -> Dataset:
    """A Dataset from in-memory arrays/tensors (numpy, torch or nested lists): the shared core of the
    ``arrays`` dataset and of ``kdlab.distill``."""
    x = _inputs(xtr, layout, "train")
    tr = Split(x, _labels(ytr, len(x), "train"))
    if xte is not None:
        if test_fraction:
            raise KDLabError("dataset 'arrays': the data has a test split; drop `test_fraction`")
        xt = _inputs(xte, layout, "test")
        te = Split(xt, _labels(yte, len(xt), "test"))
        if te.x.shape[1:] != tr.x.shape[1:]:
            raise KDLabError(
                f"dataset 'arrays': train inputs are {tuple(tr.x.shape[1:])} but test inputs {tuple(te.x.shape[1:])}"
            )
    elif test_fraction:
        if not 0 < test_fraction < 1:
            raise KDLabError(f"data.kwargs.test_fraction must be in (0, 1); got {test_fraction!r}")
        idx = stratified_subset(tr.y, max(1, round(test_fraction * len(tr))), split_seed)
        keep = torch.ones(len(tr), dtype=torch.bool)
        keep[idx] = False
        tr, te = tr.subset(keep.nonzero().squeeze(1)), tr.subset(idx)
    else:
        raise KDLabError(
            "dataset 'arrays': no test data; give `test:` (or x_test/y_test in the file) or `test_fraction:` (e.g. 0.2)"
        )
    seen = int(max(int(tr.y.max()), int(te.y.max()))) + 1
    k = num_classes if num_classes is not None else seen
    if k < seen:
        raise KDLabError(f"data.kwargs.num_classes={k} but the labels go up to {seen - 1}")
    channels = tr.x.shape[1]
    auto_mean, auto_std = channel_stats(tr.x)
    auto_std = tuple(s if s > 0 else 1.0 for s in auto_std)  # constant features/pixels: leave them as they are
    m = _stats(mean, auto_mean, channels, "mean", 0.0)
    s = _stats(std, auto_std, channels, "std", 1.0)
    if any(v <= 0 for v in s):
        raise KDLabError(f"data.kwargs.std must be positive; got {list(s)}")
    names = list(classes) if classes else [str(i) for i in range(k)]
    if len(names) != k:
        raise KDLabError(f"data.kwargs.classes: {len(names)} names for {k} classes")
    return Dataset(
        name=name,
        train=tr,
        test=te,
        num_classes=k,
        mean=m,
        std=s,
        classes=names,
        notes=f"arrays from {source}: {len(tr)} train / {len(te)} test, inputs {tuple(tr.x.shape[1:])}",
    )
