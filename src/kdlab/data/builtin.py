"""Built-in datasets that need no download: scikit-learn digits, Fashion-MNIST (Debian package), MNIST-1D.

Every builder has the signature ``fn(*, root=None, ...) -> Dataset`` and is registered in
``kdlab.registry.DATASETS``. Data is returned in raw scale (images float32 in [0, 1], N×C×H×W); ``mean``/``std``
are per channel and are applied on the device after the augmentation views.

Also holds :func:`stratified_subset`, the seeded, class-balanced subsetting used by the ``train_subset`` /
``test_subset`` options of the loaders here and in :mod:`kdlab.data.cifar`.
"""

from __future__ import annotations

import gzip
import os
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import Dataset, Split
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS

# --------------------------------------------------------------------------------------------------- helpers


def stratified_subset(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted, int64) of a seeded subset of ``n`` samples whose class proportions follow ``y``.

    Each class gets ``floor(n * n_c / N)`` samples; the samples left over go to the classes with the largest
    fractional remainders (ties: lower class index first). Within a class the samples are the first ones of a
    ``torch.randperm`` drawn from a CPU generator seeded with ``seed`` (one draw per class, in class order), so
    the result is deterministic across machines.
    """
    y = torch.as_tensor(y).long().cpu()
    total = len(y)
    if not 0 < n <= total:
        raise KDLabError(f"subset size must be in 1..{total}, got {n}")
    classes, counts = torch.unique(y, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    left = n - int(quota.sum())
    if left:
        remainder = exact - quota.double()
        # stable sort on -remainder keeps lower class index first among ties
        order = torch.sort(-remainder, stable=True).indices
        quota[order[:left]] += 1
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(y == c).flatten()
        perm = torch.randperm(len(members), generator=gen)
        picked.append(members[perm[:q]])
    return torch.sort(torch.cat(picked)).values


def _subset_split(split: Split, n: int | None, seed: int, what: str) -> Split:
    if n is None or n == len(split):
        return split
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= len(split):
        raise KDLabError(f"{what} must be an integer in 1..{len(split)} (or null for all), got {n!r}")
    return split.subset(stratified_subset(split.y, n, seed))


def apply_subsets(
    train: Split, test: Split, train_subset: int | None, test_subset: int | None, seed: int
) -> tuple[Split, Split]:
    """Seeded stratified ``train_subset`` / ``test_subset`` (``None`` keeps the whole split)."""
    return (
        _subset_split(train, train_subset, seed, "train_subset"),
        _subset_split(test, test_subset, seed, "test_subset"),
    )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``x`` (N×C×...) computed in float64."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist())


# ---------------------------------------------------------------------------------------------------- digits

DIGITS_TEST_SIZE = 500
DIGITS_SEED = 0


@DATASETS.register(
    "digits",
    description="scikit-learn 8x8 handwritten digits, 1,297 train / 500 test (stratified, seed 0)",
    paper="Alpaydin & Kaynak 1998, UCI Optical Recognition of Handwritten Digits",
)
def digits(*, root: str | None = None, train_subset: int | None = None, seed: int = 0) -> Dataset:
    """scikit-learn ``load_digits``: 1,797 images (1, 8, 8) scaled to [0, 1] (pixel values / 16), 10 classes.

    Fixed split: a stratified test set of 500 samples drawn with :func:`stratified_subset` (seed 0) and the
    remaining 1,297 samples as the training set. Deterministic; ``root`` is ignored (the data ships with
    scikit-learn). ``train_subset`` keeps a stratified, seeded part of the training split (the test split
    never changes), for low-data settings where distillation matters most. mean/std are computed on the
    full training split, so subsets share the normalisation.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1).contiguous()
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    test_idx = stratified_subset(y, DIGITS_TEST_SIZE, DIGITS_SEED)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test_idx] = False
    train = Split(x[mask], y[mask])
    test = Split(x[test_idx], y[test_idx])
    mean, std = channel_stats(train.x)
    train, test = apply_subsets(train, test, train_subset, None, seed)
    return Dataset(
        name="digits",
        train=train,
        test=test,
        num_classes=10,
        mean=mean,
        std=std,
        classes=[str(i) for i in range(10)],
        notes=f"scikit-learn load_digits; stratified split {len(train)}/{len(test)}, seed {DIGITS_SEED}",
    )


# --------------------------------------------------------------------------------------------- fashion_mnist

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Per-pixel statistics of the 60,000 training images (the values quoted in the Fashion-MNIST literature).
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or uncompressed) into a numpy array (uint8 payloads, as in (Fashion-)MNIST)."""
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise KDLabError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise KDLabError(f"{path}: unsupported idx element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise KDLabError(f"{path}: idx header says {shape} but the file holds {arr.size} values")
    return arr.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@DATASETS.register(
    "fashion_mnist",
    description="Fashion-MNIST, 60,000 train / 10,000 test 28x28 grayscale, 10 classes (Debian package)",
    paper="Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747",
)
def fashion_mnist(
    *,
    root: str | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """The complete Fashion-MNIST from its original idx files, images (1, 28, 28) in [0, 1].

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
    both ``*-idx?-ubyte.gz`` and un-gzipped files are accepted (also under ``root/FashionMNIST/raw``, the
    torchvision layout). ``train_subset`` / ``test_subset`` take a stratified subset drawn with ``seed``
    (see :func:`stratified_subset`), e.g. for CPU benchmarks. Nothing is cached on disk; loading takes ~0.5 s.
    mean/std are the standard full-training-set values (also when subsetting).
    """
    base = Path(root if root is not None else FASHION_ROOT).expanduser()
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    found = {k: _find_idx(base, s) for k, s in stems.items()}
    missing = [stems[k] for k, p in found.items() if p is None]
    if missing:
        raise KDLabError(
            f"Fashion-MNIST not found in {str(base)!r} (missing {', '.join(m + '[.gz]' for m in missing)}): "
            "run `apt-get install dataset-fashion-mnist` or pass root= a folder holding the idx files"
        )

    def load(kx: str, ky: str) -> Split:
        xs = read_idx(found[kx])  # type: ignore[arg-type]
        ys = read_idx(found[ky])  # type: ignore[arg-type]
        x = torch.from_numpy(xs.astype(np.float32)).div_(255.0).unsqueeze(1)
        return Split(x, torch.from_numpy(ys.astype(np.int64)))

    train, test = apply_subsets(load("train_x", "train_y"), load("test_x", "test_y"), train_subset, test_subset, seed)
    notes = f"idx files from {base}"
    if train_subset is not None or test_subset is not None:
        notes += f"; stratified subset {len(train)}/{len(test)}, seed {seed}"
    return Dataset(
        name="fashion_mnist",
        train=train,
        test=test,
        num_classes=10,
        mean=FASHION_MEAN,
        std=FASHION_STD,
        classes=list(FASHION_CLASSES),
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------- mnist1d


@lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise KDLabError("dataset 'mnist1d' needs the mnist1d package: pip install 'kdlab[mnist1d]'") from None
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    # make_dataset reseeds the global `random` and numpy generators: put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = (d["x"], d["y"], d["x_test"], d["y_test"])
    for a in arrays:
        a.setflags(write=False)
    return arrays


@DATASETS.register(
    "mnist1d",
    description="MNIST-1D, procedurally generated 1-D digits (1, 40), 10 classes, 80/20 train/test",
    paper="Greydanus & Kobak 2024, ICML, arXiv:2011.14439",
)
def mnist1d(*, root: str | None = None, num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D generated offline with ``mnist1d.data.make_dataset`` (never the download path).

    Signals of shape (1, 40) (the generator already centres and scales them globally), 10 classes, the
    generator's own split (first 80 % train, last 20 % test: 4,000 / 1,000 for the default 5,000 samples).
    ``seed`` 42 is the published default. mean/std are computed on the training split. ``root`` is ignored.
    The arrays are memoised in memory per (num_samples, seed); the global ``random``/numpy states are restored.
    """
    if num_samples < 20:
        raise KDLabError(f"mnist1d num_samples must be >= 20, got {num_samples}")
    xtr, ytr, xte, yte = _mnist1d_arrays(int(num_samples), int(seed))
    train = Split(torch.tensor(xtr, dtype=torch.float32).unsqueeze(1), torch.tensor(ytr, dtype=torch.int64))
    test = Split(torch.tensor(xte, dtype=torch.float32).unsqueeze(1), torch.tensor(yte, dtype=torch.int64))
    mean, std = channel_stats(train.x)
    return Dataset(
        name="mnist1d",
        train=train,
        test=test,
        num_classes=10,
        mean=mean,
        std=std,
        classes=[str(i) for i in range(10)],
        notes=f"mnist1d make_dataset(num_samples={num_samples}, seed={seed})",
    )
