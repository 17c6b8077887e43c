"""Image-folder datasets decoded with Pillow: ``imagefolder``, ``tiny_imagenet`` and (streaming) ``imagenet``.

Layouts::

    imagefolder:    root/train/<class>/*.png|jpg|...     root/val/<class>/...  (or root/test/<class>/...)
    tiny_imagenet:  root/train/<wnid>/images/*.JPEG      root/val/images/*.JPEG + root/val/val_annotations.txt
    imagenet:       root/train/<wnid>/*.JPEG             root/val/<wnid>/*.JPEG  (the usual ImageFolder layout)

Class indices follow the sorted class-folder names of ``train/``. In-memory builders decode every image once
into a float32 tensor (4·C·S² bytes per image: fine for small sets; Tiny ImageNet at 64 px needs ~5 GB).
With ``stream=True`` (always for ``imagenet``) the splits are :class:`~kdlab.data.loader.StreamSplit` objects
over an :class:`ImageFiles` dataset, decoded batch by batch by the :class:`~kdlab.data.loader.StreamLoader`
workers. Images are resized to a square ``image_size`` (``resize="square"``) or, ImageNet style, shorter side
to ``image_size / 0.875`` then centre-cropped (``resize="center"``). Random crops/flips are views, applied later
on the device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from kdlab.data.base import Dataset, Split
from kdlab.data.builtin import channel_stats
from kdlab.data.loader import StreamSplit
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTER_CROP_RATIO = 0.875  # 224 / 256


def load_image(path: str, image_size: int, channels: int = 3, resize: str = "square") -> torch.Tensor:
    """Decode one image file to a uint8 tensor (channels, image_size, image_size)."""
    from PIL import Image

    with Image.open(path) as im:
        if resize == "center":
            short = max(image_size, round(image_size / CENTER_CROP_RATIO))
            im.draft(None, (short, short))  # JPEG only: DCT-domain downscaling, result stays >= short
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        if resize == "center":
            scale = short / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        elif (w, h) != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        a = np.array(im, dtype=np.uint8)  # a writable copy
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


class ImageFiles(torch.utils.data.Dataset):
    """Map-style dataset over image files: ``ds[i] -> (uint8 tensor C×S×S, int label)``. Picklable (workers)."""

    def __init__(
        self, files: Sequence[str], labels: Sequence[int], image_size: int, channels: int = 3, resize: str = "square"
    ):
        if len(files) != len(labels):
            raise ValueError("files and labels differ in length")
        self.files = list(files)
        self.labels = [int(v) for v in labels]
        self.image_size, self.channels, self.resize = int(image_size), int(channels), resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[i], self.image_size, self.channels, self.resize), self.labels[i]

    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


# ---------------------------------------------------------------------------------------------------- scanning


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_classes(split_dir: Path, classes: list[str], sub: str = "") -> tuple[list[str], list[int]]:
    """Files and labels of ``split_dir/<class>/<sub>/*``; classes not in ``classes`` are an error."""
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for c in _class_dirs(split_dir):
        if c not in index:
            raise KDLabError(f"{split_dir / c} is a class that train/ does not have (train classes: {classes[:10]}...)")
        folder = split_dir / c / sub if sub else split_dir / c
        found = _images_in(folder) if folder.is_dir() else []
        files += found
        labels += [index[c]] * len(found)
    if not files:
        raise KDLabError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {split_dir}")
    return files, labels


def _require_root(root: str | None, what: str, layout: str) -> Path:
    if root is None:
        raise KDLabError(f"dataset {what!r} needs root= a folder with the layout {layout}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise KDLabError(f"{what}: root {str(base)!r} is not a folder (expected the layout {layout})")
    return base


def _check_image_args(image_size: int, channels: int, resize: str) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise KDLabError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise KDLabError(f"channels must be 1 or 3, got {channels!r}")
    if resize not in ("square", "center"):
        raise KDLabError(f"resize must be 'square' or 'center', got {resize!r}")


def _decode_all(files: ImageFiles, num_threads: int | None) -> Split:
    """Decode every file into memory (Pillow releases the GIL while decoding, so threads help)."""
    n = num_threads or min(8, os.cpu_count() or 1)
    out = torch.empty((len(files), *files.sample_shape()), dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = files[i][0]

    if n > 1 and len(files) > 64:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(work, range(len(files))))
    else:
        for i in range(len(files)):
            work(i)
    return Split(out.float().div_(255.0), torch.tensor(files.labels, dtype=torch.int64))


def _make_splits(
    train: ImageFiles, test: ImageFiles, stream: bool, num_threads: int | None
) -> tuple[Split | StreamSplit, Split | StreamSplit]:
    if stream:
        shape = train.sample_shape()
        return (
            StreamSplit(train, torch.tensor(train.labels, dtype=torch.int64), shape),
            StreamSplit(test, torch.tensor(test.labels, dtype=torch.int64), shape),
        )
    return _decode_all(train, num_threads), _decode_all(test, num_threads)


# ------------------------------------------------------------------------------------------------- builders

FOLDER_LAYOUT = "root/train/<class>/*.png|jpg and root/val/<class>/* (or root/test/<class>/*)"


@DATASETS.register("imagefolder", description="images in root/train/<class>/ and root/val|test/<class>/ (Pillow)")
def imagefolder(
    *,
    root: str | None = None,
    image_size: int = 32,
    channels: int = 3,
    resize: str = "square",
    stream: bool = False,
    num_threads: int | None = None,
) -> Dataset:
    """A class-per-folder image set: ``root/train/<class>/*`` and ``root/val/<class>/*`` (else ``root/test``).

    Classes are the sorted folder names of ``train/``. Images are converted to ``channels`` (3 = RGB, 1 = L)
    and resized to ``image_size`` × ``image_size`` (``resize="square"``, aspect not kept; ``"center"``:
    shorter side then centre crop). By default everything is decoded into memory as float32 — fine for small
    sets; pass ``stream=True`` to get :class:`~kdlab.data.loader.StreamSplit` splits decoded per batch.
    mean/std: per channel over the training images (over a fixed sample of 512 of them when streaming).
    """
    _check_image_args(image_size, channels, resize)
    base = _require_root(root, "imagefolder", FOLDER_LAYOUT)
    train_dir = base / "train"
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise KDLabError(f"imagefolder: {str(base)!r} needs train/ and val/ (or test/) folders: {FOLDER_LAYOUT}")
    classes = _class_dirs(train_dir)
    if not classes:
        raise KDLabError(f"imagefolder: no class folders in {train_dir}")
    tr = ImageFiles(*_scan_classes(train_dir, classes), image_size, channels, resize)
    te = ImageFiles(*_scan_classes(test_dir, classes), image_size, channels, resize)
    train, test = _make_splits(tr, te, stream, num_threads)
    if stream:  # estimate from a fixed sample of at most 512 training images
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
        mean, std = channel_stats(train.get_batch(sample)[0])  # type: ignore[union-attr]
    else:
        mean, std = channel_stats(train.x)  # type: ignore[arg-type]
    return Dataset(
        name="imagefolder",
        train=train,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=len(classes),
        mean=mean,
        std=std,
        classes=classes,
        notes=f"{base} ({train_dir.name}/{test_dir.name}), {image_size}px, {channels} channel(s)"
        + (", streamed" if stream else ""),
    )


TINY_LAYOUT = "root/train/<wnid>/images/*.JPEG, root/val/images/*.JPEG and root/val/val_annotations.txt"


@DATASETS.register(
    "tiny_imagenet",
    description="Tiny ImageNet (tiny-imagenet-200): 100,000 train / 10,000 val 64x64 colour, 200 classes",
    paper="Le & Yang 2015, Tiny ImageNet Visual Recognition Challenge (CS231N)",
)
def tiny_imagenet(
    *,
    root: str | None = None,
    image_size: int = 64,
    stream: bool = False,
    num_threads: int | None = None,
) -> Dataset:
    """Tiny ImageNet in its standard ``tiny-imagenet-200`` layout (the validation set is the test split).

    ``root`` is the ``tiny-imagenet-200`` folder (or its parent). Validation labels come from
    ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>...``); class names from ``words.txt`` when present (else
    the wnids). In memory by default: 100k×3×64×64 float32 is ~5 GB (use ``image_size=32`` or
    ``stream=True`` for less). ImageNet mean/std.
    """
    _check_image_args(image_size, 3, "square")
    base = _require_root(root, "tiny_imagenet", TINY_LAYOUT)
    if not (base / "train").is_dir() and (base / "tiny-imagenet-200").is_dir():
        base = base / "tiny-imagenet-200"
    train_dir, val_dir = base / "train", base / "val"
    ann = val_dir / "val_annotations.txt"
    if not train_dir.is_dir() or not ann.is_file():
        raise KDLabError(f"tiny_imagenet: {str(base)!r} does not have the layout {TINY_LAYOUT}")
    wnids = _class_dirs(train_dir)
    tr = ImageFiles(*_scan_classes(train_dir, wnids, sub="images"), image_size, 3)
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for line_no, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or not line.strip():
            continue
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise KDLabError(f"{ann}:{line_no}: class {wnid!r} is not a folder of {train_dir}")
        path = val_dir / "images" / name
        if not path.is_file():
            raise KDLabError(f"{ann}:{line_no}: {path} does not exist")
        files.append(str(path))
        labels.append(index[wnid])
    if not files:
        raise KDLabError(f"tiny_imagenet: {ann} lists no images")
    te = ImageFiles(files, labels, image_size, 3)
    train, test = _make_splits(tr, te, stream, num_threads)
    words = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text(errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    return Dataset(
        name="tiny_imagenet",
        train=train,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=len(wnids),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=[words.get(w) or w for w in wnids],
        notes=f"{base}, {image_size}px" + (", streamed" if stream else "") + "; test split = official val",
    )


@DATASETS.register(
    "imagenet",
    description="ImageNet-1k (ILSVRC-2012) from root/train/<wnid>/ and root/val/<wnid>/, streamed from disk",
    paper="Russakovsky et al. 2015, IJCV, arXiv:1409.0575",
)
def imagenet(*, root: str | None = None, image_size: int = 224, resize: str = "center") -> Dataset:
    """ImageNet in the usual ImageFolder layout (``val/`` sorted into class folders), always streamed.

    Each image is decoded on demand by the loader's workers: shorter side to ``image_size / 0.875`` (256 for
    224), centre crop ``image_size`` (``resize="square"`` squashes instead). Classes are the sorted wnids;
    ImageNet mean/std. Random-resized-crop style augmentation is not done here.
    """
    _check_image_args(image_size, 3, resize)
    layout = "root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG"
    base = _require_root(root, "imagenet", layout)
    train_dir, val_dir = base / "train", base / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise KDLabError(f"imagenet: {str(base)!r} needs train/ and val/ folders: {layout}")
    wnids = _class_dirs(train_dir)
    tr = ImageFiles(*_scan_classes(train_dir, wnids), image_size, 3, resize)
    te = ImageFiles(*_scan_classes(val_dir, wnids), image_size, 3, resize)
    train, test = _make_splits(tr, te, stream=True, num_threads=None)
    return Dataset(
        name="imagenet",
        train=train,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=len(wnids),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=wnids,
        notes=f"{base}, {image_size}px ({resize}), streamed",
    )
