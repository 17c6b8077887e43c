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

import io
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from kdlab.data import decoded as D
from kdlab.data.archive import find_archives, read_archives
from kdlab.data.base import Dataset, Split
from kdlab.data.builtin import apply_subsets, channel_stats
from kdlab.data.decoded import cache_root, file_sha256, folder_fingerprint, uint8_channel_stats
from kdlab.data.loader import StreamSplit
from kdlab.engine.progress import TaskBar
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTER_CROP_RATIO = 0.875  # 224 / 256


def load_image(path: str | bytes, image_size: int, channels: int = 3, resize: str = "square") -> torch.Tensor:
    """Decode one image (a file path, or the encoded bytes of an archive member) to a uint8 tensor
    (channels, image_size, image_size)."""
    from PIL import Image

    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
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


def _check_image_args(image_size: int | None, channels: int | None, resize: str, allow_none: bool = False) -> None:
    if not (allow_none and image_size is None) and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise KDLabError(f"image_size must be a positive integer, got {image_size!r}")
    if not (allow_none and channels is None) and channels not in (1, 3):
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

FOLDER_LAYOUT = (
    "root/train/<class>/*.png|jpg and root/val/<class>/* (or root/test/<class>/*), or .tar/.tar.gz archives "
    "of those folders (root = an archive or a folder of archives)"
)
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
SAMPLE_CLASSES = 64  # geometry is inferred from the first image of up to this many classes


def _infer_geometry(
    samples: Sequence[str | bytes], image_size: int | None, channels: int | None, where: str
) -> tuple[int, int]:
    """(image_size, channels): the given values, else what the images are (1 channel only if all sampled are
    grayscale; the side of the sampled images when they are all the same square size)."""
    if image_size is not None and channels is not None:
        return image_size, channels
    from PIL import Image

    modes, sizes = [], set()
    for src in samples:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            modes.append(im.mode)
            sizes.add(im.size)
    if channels is None:
        channels = 1 if all(m in GRAY_MODES for m in modes) else 3
    if image_size is None:
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            raise KDLabError(
                f"imagefolder: the images in {where} are not all one square size ({shown}): set data.kwargs.image_size"
            )
        image_size = next(iter(sizes))[0]
    return image_size, channels


def _decode_uint8(
    sources: Sequence[str | bytes], image_size: int, channels: int, resize: str, num_threads: int | None, label: str
) -> np.ndarray:
    """Decode every image into one uint8 N×C×S×S array, with Pillow in a thread pool (it releases the GIL)
    and a progress bar on a terminal (a start and an end line otherwise)."""
    out = np.empty((len(sources), channels, image_size, image_size), dtype=np.uint8)
    n = num_threads or min(8, os.cpu_count() or 1)
    chunks = [range(i, min(i + 256, len(sources))) for i in range(0, len(sources), 256)]

    def work(idx: range) -> int:
        for i in idx:
            out[i] = load_image(sources[i], image_size, channels, resize).numpy()
        return len(idx)

    t0 = time.perf_counter()
    big = len(sources) > 256
    bar = TaskBar(
        f"decoding {label}", len(sources) if big else 0, unit="images", console=_stderr_console() if big else None
    )
    if big and bar.bar is None:
        print(f"kdlab: decoding {len(sources):,} images of {label} once (a uint8 copy is cached)", file=sys.stderr)
    try:
        if n > 1 and len(sources) > 64:
            with ThreadPoolExecutor(n) as pool:
                for done in pool.map(work, chunks):
                    bar.advance(done)
        else:
            for idx in chunks:
                bar.advance(work(idx))
    finally:
        bar.stop()
    if len(sources) > 256:
        print(f"kdlab: decoded {len(sources):,} images of {label} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    """float32 [0, 1] images (the dataset contract), converted chunk by chunk from a (memory-mapped) uint8 array."""
    out = torch.empty(x.shape, dtype=torch.float32)
    for i in range(0, len(x), 8192):
        out[i : i + 8192] = torch.from_numpy(np.array(x[i : i + 8192])).float().div_(255.0)
    return Split(out, torch.from_numpy(np.array(y, dtype=np.int64)))


def _class_table(found: dict[str, dict[str, list]], where: str) -> tuple[list[str], str]:
    """Sorted train classes and the name of the held-out split (val, else test) of an archive listing."""
    test_name = next((s for s in ("val", "test") if s in found), None)
    if "train" not in found or test_name is None:
        raise KDLabError(
            f"imagefolder: {where} holds no train/ and val/ (or test/) class folders of images: {FOLDER_LAYOUT}"
        )
    classes = sorted(found["train"])
    extra = sorted(set(found[test_name]) - set(classes))
    if extra:
        raise KDLabError(f"imagefolder: {where} has {test_name}/ classes that train/ does not have: {extra[:5]}")
    return classes, test_name


def _cache_dir(cache: bool | str) -> Path | None:
    if cache is False or cache is None:
        return None
    if cache is True:
        return cache_root()
    return Path(str(cache)).expanduser()


def _decoded(key_sources: list[str], options: dict, cache: bool | str, decode) -> tuple[dict, dict, str]:
    """(arrays, meta, where): the cached decoded copy for this key, or ``decode()`` stored under it."""
    root = _cache_dir(cache)
    entry = D.entry_dir(D.entry_key(key_sources, options), root) if root is not None else None
    hit = D.load_entry(entry) if entry is not None else None
    if hit is not None:
        return hit[0], hit[1], f"decoded copy {entry}"
    arrays, meta = decode()
    if entry is not None:
        D.save_entry(entry, arrays, meta)
    return arrays, meta, "decoded now" + (f", cached in {entry}" if entry is not None else "")


@DATASETS.register(
    "imagefolder",
    description="images in root/train/<class>/ and root/val|test/<class>/, as folders or .tar/.tar.gz archives "
    "(decoded once, cached); channels and image_size default to the images' own",
)
def imagefolder(
    *,
    root: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = "square",
    stream: bool = False,
    num_threads: int | None = None,
    cache: bool | str = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A class-per-folder image set: ``root/train/<class>/*`` and ``root/val/<class>/*`` (else ``root/test``),
    or the same folders inside ``.tar``/``.tar.gz``/``.tgz`` archives (``root`` = one archive, or a folder
    holding them; several are merged, e.g. one per split), read without unpacking.

    Classes are the sorted folder names of ``train/``. ``channels`` (3 = RGB, 1 = L) and ``image_size``
    default to what the images are: grayscale stays 1 channel, and images of one square size keep it (mixed
    sizes need ``image_size``). ``resize="square"`` squashes to image_size² (aspect not kept); ``"center"``:
    shorter side then centre crop. Everything is decoded once into a uint8 copy kept in ``cache`` (True:
    ``$KDLAB_CACHE`` or ``~/.cache/kdlab``; a path; False: none), keyed by the archives' sha256 (plain folders:
    paths, sizes and mtimes) and the options, so later runs load in about a second; the splits are float32
    in memory. ``stream=True`` (plain folders only) decodes per batch instead. mean/std: per channel over the
    training images (over a fixed sample of 512 of them when streaming). ``train_subset``/``test_subset``:
    seeded (``seed``) stratified subsets of the in-memory splits; mean/std stay those of the full training split.
    """
    _check_image_args(image_size, channels, resize, allow_none=True)
    if root is None:
        raise KDLabError(f"dataset 'imagefolder' needs root= a folder or archive with the layout {FOLDER_LAYOUT}")
    base = Path(root).expanduser()
    if not base.exists():
        raise KDLabError(
            f"imagefolder: root {str(base)!r} does not exist (expected the layout {FOLDER_LAYOUT}); "
            "point at it with data.kwargs.root=PATH"
        )
    archives = [] if (base / "train").is_dir() else find_archives(base)
    options = {"image_size": image_size, "channels": channels, "resize": resize}
    if archives:
        if stream:
            raise KDLabError(
                f"imagefolder: stream=True needs an unpacked folder; {base} is read from archives "
                "(unpack them, or drop stream to decode once into the cache)"
            )
        memo = _cache_dir(cache) or Path(os.environ.get("TMPDIR", "/tmp"))
        sources = [f"{a.name}:{file_sha256(a, memo)}" for a in archives]

        def decode() -> tuple[dict, dict]:
            found = read_archives(archives, IMAGE_EXTENSIONS)
            classes, test_name = _class_table(found, str(base))
            return _decode_tables(
                found["train"],
                found[test_name],
                classes,
                test_name,
                image_size,
                channels,
                resize,
                num_threads,
                ", ".join(a.name for a in archives),
                uint8_channel_stats,
            )
    else:
        train_dir = base / "train"
        test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
        if not base.is_dir() or not train_dir.is_dir() or test_dir is None:
            raise KDLabError(
                f"imagefolder: {str(base)!r} needs train/ and val/ (or test/) folders, or .tar/.tar.gz "
                f"archives of them: {FOLDER_LAYOUT}"
            )
        classes = _class_dirs(train_dir)
        if not classes:
            raise KDLabError(f"imagefolder: no class folders in {train_dir}")
        tr_files, tr_labels = _scan_classes(train_dir, classes)
        te_files, te_labels = _scan_classes(test_dir, classes)
        if stream:
            if train_subset is not None or test_subset is not None:
                raise KDLabError("imagefolder: train_subset/test_subset work on in-memory splits; drop stream=True")
            return _streamed_folder(
                base,
                train_dir,
                test_dir,
                classes,
                tr_files,
                tr_labels,
                te_files,
                te_labels,
                image_size,
                channels,
                resize,
            )
        sources = [folder_fingerprint([train_dir, test_dir])]

        def decode() -> tuple[dict, dict]:
            tables = [{c: [] for c in classes}, {c: [] for c in classes}]
            for table, files, labels in ((tables[0], tr_files, tr_labels), (tables[1], te_files, te_labels)):
                for f, y in zip(files, labels):
                    table[classes[y]].append((f, f))
            return _decode_tables(
                tables[0],
                tables[1],
                classes,
                test_dir.name,
                image_size,
                channels,
                resize,
                num_threads,
                str(base),
                uint8_channel_stats,
            )

    arrays, meta, where = _decoded(sources, options, cache, decode)
    train, test = _to_split(arrays["train_x"], arrays["train_y"]), _to_split(arrays["test_x"], arrays["test_y"])
    train, test = apply_subsets(train, test, train_subset, test_subset, seed)
    size, ch = int(arrays["train_x"].shape[-1]), int(arrays["train_x"].shape[1])
    return Dataset(
        name="imagefolder",
        train=train,
        test=test,
        num_classes=len(meta["classes"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        classes=list(meta["classes"]),
        notes=f"{base} (train/{meta['test_split']}), {size}px, {ch} channel(s); {where}",
    )


def _decode_tables(
    train: dict,
    test: dict,
    classes: list[str],
    test_name: str,
    image_size: int | None,
    channels: int | None,
    resize: str,
    num_threads: int | None,
    label: str,
    stats,
) -> tuple[dict, dict]:
    """Decode ``{class: [(name, path or bytes), ...]}`` tables of both splits into the cache's arrays + meta."""
    samples = [train[c][0][1] for c in classes[:SAMPLE_CLASSES] if train[c]]
    if not samples:
        raise KDLabError(f"imagefolder: no training images in {label}")
    size, ch = _infer_geometry(samples, image_size, channels, label)
    arrays = {}
    for split, table in (("train", train), ("test", test)):
        srcs = [src for c in classes for _, src in table.get(c, [])]
        ys = [i for i, c in enumerate(classes) for _ in table.get(c, [])]
        if not srcs:
            raise KDLabError(f"imagefolder: no {split if split == 'train' else test_name} images in {label}")
        arrays[f"{split}_x"] = _decode_uint8(srcs, size, ch, resize, num_threads, f"{label} ({split})")
        arrays[f"{split}_y"] = np.asarray(ys, dtype=np.int64)
    mean, std = stats(arrays["train_x"])
    meta = {"classes": classes, "test_split": test_name, "mean": mean, "std": std, "source": label}
    return arrays, meta


def _streamed_folder(
    base: Path,
    train_dir: Path,
    test_dir: Path,
    classes: list[str],
    tr_files,
    tr_labels,
    te_files,
    te_labels,
    image_size: int | None,
    channels: int | None,
    resize: str,
) -> Dataset:
    first = {}
    for f, y in zip(tr_files, tr_labels):
        first.setdefault(y, f)
    size, ch = _infer_geometry(list(first.values())[:SAMPLE_CLASSES], image_size, channels, str(train_dir))
    tr, te = ImageFiles(tr_files, tr_labels, size, ch, resize), ImageFiles(te_files, te_labels, size, ch, resize)
    train, test = _make_splits(tr, te, True, None)
    sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
    mean, std = channel_stats(train.get_batch(sample)[0])  # type: ignore[union-attr]
    return Dataset(
        name="imagefolder",
        train=train,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=len(classes),
        mean=mean,
        std=std,
        classes=classes,
        notes=f"{base} ({train_dir.name}/{test_dir.name}), {size}px, {ch} channel(s), streamed",
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
