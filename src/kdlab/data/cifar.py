"""CIFAR-10 and CIFAR-100 from the standard python-pickle archives, read from a local folder.

Nothing is downloaded. Put either the extracted folder or the ``.tar.gz`` archive in ``root`` (default
``data/``)::

    data/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   or  data/cifar-10-python.tar.gz
    data/cifar-100-python/{train, test, meta}                              or  data/cifar-100-python.tar.gz

(from https://www.cs.toronto.edu/~kriz/cifar.html). The archives are Python pickles, read with
``pickle.load(f, encoding="bytes")``: unpickling can run arbitrary code, so only load files you trust (the
official archives). The ``.tar.gz`` is read in memory, never extracted to disk.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.base import Dataset, Split
from kdlab.data.builtin import apply_subsets
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Per-channel statistics of the training images. CIFAR-10: the true pixel std (0.2470, 0.2435, 0.2616); some
# code bases use (0.2023, 0.1994, 0.2010), a std of per-image means. CIFAR-100: the values of the CRD /
# mdistiller code bases used throughout the distillation literature.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _get(d: dict, key: str) -> Any:
    """A pickle dict entry whether the archive was written with bytes keys (the official one) or str keys."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise KDLabError(f"CIFAR pickle has no {key!r} entry (keys: {sorted(str(k) for k in d)})")


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _read_archive(root: Path, folder: str, archive: str, files: list[str], optional: list[str], what: str) -> dict:
    """Unpickle ``files`` (required) and ``optional`` from the extracted folder or the archive, else raise.

    Returns ``{name: unpickled dict}``. The ``.tar.gz`` is streamed once, in order, without touching the disk.
    """
    for d in [root / folder, root] if root.name != folder else [root]:
        if all((d / f).is_file() for f in files):
            out = {}
            for name in files + [o for o in optional if (d / o).is_file()]:
                with open(d / name, "rb") as f:
                    out[name] = pickle.load(f, encoding="bytes")
            return out
    tar_path = root / archive
    if tar_path.is_file():
        wanted = {f"{folder}/{name}": name for name in files + optional}
        out = {}
        with tarfile.open(tar_path, "r|gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue
                f = tar.extractfile(member)
                assert f is not None
                with f:
                    out[name] = pickle.load(f, encoding="bytes")
        lacking = [f for f in files if f not in out]
        if lacking:
            raise KDLabError(
                f"{tar_path} lacks {', '.join(folder + '/' + f for f in lacking)}: is it the official {what} archive?"
            )
        return out
    raise KDLabError(
        f"{what} not found under {str(root)!r} ({root.resolve()}): put the extracted folder {folder}/ "
        f"({', '.join(files)}) or the archive {archive} in that folder "
        f"(download it by hand from {CIFAR_URL}; nothing is downloaded automatically), or pass root="
    )


def _to_split(batches: list[dict], label_key: str) -> Split:
    data = np.concatenate([np.asarray(_get(b, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(_get(b, label_key), dtype=np.int64) for b in batches])
    x = torch.from_numpy(data).float().div_(255.0)
    return Split(x, torch.from_numpy(labels))


@DATASETS.register(
    "cifar10",
    description="CIFAR-10, 50,000 train / 10,000 test 32x32 colour, 10 classes (local python archive)",
    paper="Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
)
def cifar10(
    *, root: str | None = None, train_subset: int | None = None, test_subset: int | None = None, seed: int = 0
) -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py/`` or ``root/cifar-10-python.tar.gz`` (``root`` default ``data/``).

    The standard python-pickle archive (only load trusted files: unpickling can run code). Images (3, 32, 32)
    in [0, 1]; standard mean/std. ``train_subset`` / ``test_subset``: seeded stratified subsets.
    """
    base = Path(root if root is not None else "data").expanduser()
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    parts = _read_archive(
        base, "cifar-10-batches-py", "cifar-10-python.tar.gz", [*train_files, "test_batch"], ["batches.meta"],
        "CIFAR-10",
    )  # fmt: skip
    train = _to_split([parts[f] for f in train_files], "labels")
    test = _to_split([parts["test_batch"]], "labels")
    meta = parts.get("batches.meta", {})
    names = meta.get(b"label_names", meta.get("label_names"))
    classes = [_text(c) for c in names] if names is not None else list(CIFAR10_CLASSES)
    train, test = apply_subsets(train, test, train_subset, test_subset, seed)
    return Dataset(
        name="cifar10",
        train=train,
        test=test,
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        classes=classes,
        notes=f"python archive from {base}",
    )


@DATASETS.register(
    "cifar100",
    description="CIFAR-100, 50,000 train / 10,000 test 32x32 colour, 100 fine classes (local python archive)",
    paper="Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
)
def cifar100(
    *, root: str | None = None, train_subset: int | None = None, test_subset: int | None = None, seed: int = 0
) -> Dataset:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python/`` or ``root/cifar-100-python.tar.gz``.

    The standard python-pickle archive (only load trusted files: unpickling can run code). ``root`` defaults
    to ``data/``; class names come from ``meta``. Images (3, 32, 32) in [0, 1]; standard mean/std.
    ``train_subset`` / ``test_subset``: seeded stratified subsets.
    """
    base = Path(root if root is not None else "data").expanduser()
    parts = _read_archive(base, "cifar-100-python", "cifar-100-python.tar.gz", ["train", "test"], ["meta"], "CIFAR-100")
    train = _to_split([parts["train"]], "fine_labels")
    test = _to_split([parts["test"]], "fine_labels")
    meta = parts.get("meta", {})
    names = meta.get(b"fine_label_names", meta.get("fine_label_names"))
    classes = [_text(c) for c in names] if names is not None else [str(i) for i in range(100)]
    train, test = apply_subsets(train, test, train_subset, test_subset, seed)
    return Dataset(
        name="cifar100",
        train=train,
        test=test,
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        classes=classes,
        notes=f"python archive from {base}",
    )
