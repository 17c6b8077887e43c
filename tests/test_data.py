"""Datasets (built-in, CIFAR archives, image folders, streaming) and the batch loaders."""

from __future__ import annotations

import gzip
import io
import pickle
import random
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.data import StreamLoader, StreamSplit, TensorLoader, build_dataset, make_loader
from kdlab.data.base import Split
from kdlab.data.builtin import FASHION_ROOT, read_idx, stratified_subset
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS

# ------------------------------------------------------------------------------------------------- registry


def test_all_datasets_registered():
    names = ("digits", "fashion_mnist", "mnist1d", "cifar10", "cifar100", "imagefolder", "tiny_imagenet", "imagenet")
    for name in names:
        assert name in DATASETS


def test_build_dataset_unknown_kwarg_lists_accepted():
    with pytest.raises(KDLabError, match=r"accepted kwargs: .*train_subset.*test_subset"):
        build_dataset("fashion_mnist", train_subet=10)


def test_build_dataset_unknown_name_suggests():
    with pytest.raises(KDLabError, match="did you mean 'digits'"):
        build_dataset("digts")


def test_stratified_subset_proportions_and_seed():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_subset(y, 10, seed=3)
    assert torch.bincount(y[idx]).tolist() == [5, 3, 2]
    assert len(set(idx.tolist())) == 10
    assert torch.equal(idx, stratified_subset(y, 10, seed=3))
    assert not torch.equal(idx, stratified_subset(y, 10, seed=4))
    # leftovers go to the largest remainders: 7 * (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4) -> (4, 2, 1)
    assert torch.bincount(y[stratified_subset(y, 7)]).tolist() == [4, 2, 1]
    with pytest.raises(KDLabError):
        stratified_subset(y, 101)


# --------------------------------------------------------------------------------------------------- digits


def test_digits_split_sizes_range_determinism():
    d = build_dataset("digits")
    assert (len(d.train), len(d.test)) == (1297, 500)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    assert d.train.x.min() >= 0 and d.train.x.max() <= 1 and d.train.x.max() == 1
    # stratified: each class's test count is within 1 of its share of 500
    from sklearn.datasets import load_digits

    full = torch.from_numpy(load_digits().target)
    share = torch.bincount(full).double() * 500 / len(full)
    assert ((torch.bincount(d.test.y, minlength=10).double() - share).abs() < 1).all()
    # train + test is exactly the full set
    all_x = torch.cat([d.train.x, d.test.x]).reshape(1797, -1)
    ref = torch.from_numpy(load_digits().data.astype(np.float32) / 16)
    assert torch.equal(torch.sort(all_x.sum(1)).values, torch.sort(ref.sum(1)).values)
    d2 = build_dataset("digits")
    assert torch.equal(d.train.x, d2.train.x) and torch.equal(d.test.y, d2.test.y)
    assert abs(d.mean[0] - d.train.x.mean().item()) < 1e-6


# -------------------------------------------------------------------------------------------- fashion_mnist

HAVE_FASHION = Path(FASHION_ROOT, "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Debian package dataset-fashion-mnist not installed ({FASHION_ROOT} missing)"
)


@pytest.fixture(scope="module")
def fashion():
    return build_dataset("fashion_mnist")


@needs_fashion
def test_fashion_mnist_full(fashion):
    assert fashion.train.x.shape == (60000, 1, 28, 28) and fashion.test.x.shape == (10000, 1, 28, 28)
    assert fashion.num_classes == 10 and len(fashion.classes) == 10
    assert torch.bincount(fashion.train.y).tolist() == [6000] * 10
    assert torch.bincount(fashion.test.y).tolist() == [1000] * 10
    assert fashion.train.x.min() == 0 and fashion.train.x.max() == 1
    assert abs(fashion.train.x.mean().item() - fashion.mean[0]) < 1e-3


@needs_fashion
def test_fashion_mnist_subsets_stratified_and_seeded(fashion):
    d = build_dataset("fashion_mnist", train_subset=1000, test_subset=500, seed=1)
    assert torch.bincount(d.train.y).tolist() == [100] * 10
    assert torch.bincount(d.test.y).tolist() == [50] * 10
    d2 = build_dataset("fashion_mnist", train_subset=1000, test_subset=500, seed=1)
    assert torch.equal(d.train.x, d2.train.x)
    d3 = build_dataset("fashion_mnist", train_subset=1000, seed=2)
    assert not torch.equal(d.train.x, d3.train.x) and len(d3.test) == 10000
    # the subset consists of real samples of the full set
    idx = stratified_subset(fashion.train.y, 1000, 1)
    assert torch.equal(d.train.x, fashion.train.x[idx])
    with pytest.raises(KDLabError, match="train_subset"):
        build_dataset("fashion_mnist", train_subset=60001)


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_custom_root_gz_and_raw(tmp_path, gz):
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10
    xte, yte = rng.integers(0, 256, (10, 28, 28)), np.arange(10) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte", xtr, gz)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ytr, gz)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte, gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", yte, gz)
    d = build_dataset("fashion_mnist", root=str(tmp_path))
    assert d.train.x.shape == (20, 1, 28, 28) and d.test.x.shape == (10, 1, 28, 28)
    assert torch.allclose(d.train.x[:, 0] * 255, torch.from_numpy(xtr).float())
    assert d.test.y.tolist() == yte.tolist()
    name = "train-labels-idx1-ubyte" + (".gz" if gz else "")
    assert read_idx(tmp_path / name).tolist() == ytr.tolist()


def test_fashion_mnist_missing_files_error(tmp_path):
    with pytest.raises(KDLabError, match="apt-get install dataset-fashion-mnist.*root="):
        build_dataset("fashion_mnist", root=str(tmp_path))


# -------------------------------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_global_rng_untouched():
    pytest.importorskip("mnist1d", reason="mnist1d not installed (pip install 'kdlab[mnist1d]')")
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    d = build_dataset("mnist1d")
    assert np.random.rand() == expect_np and random.random() == expect_py
    assert d.train.x.shape == (4000, 1, 40) and d.test.x.shape == (1000, 1, 40)
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    assert d.num_classes == 10 and set(d.train.y.tolist()) == set(range(10))
    assert abs(d.mean[0] - d.train.x.mean().item()) < 1e-5
    assert abs(d.std[0] - d.train.x.std().item()) < 1e-4
    small = build_dataset("mnist1d", num_samples=500, seed=1)
    assert (len(small.train), len(small.test)) == (400, 100)
    again = build_dataset("mnist1d", num_samples=500, seed=1)
    assert torch.equal(small.train.x, again.train.x)


def test_mnist1d_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(KDLabError, match=r"pip install 'kdlab\[mnist1d\]'"):
        build_dataset("mnist1d", num_samples=321, seed=7)  # arguments not memoised by other tests


# ---------------------------------------------------------------------------------------------------- CIFAR


def _cifar_images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _cifar10_files(rng) -> dict[str, bytes]:
    files = {}
    for i in range(1, 6):
        files[f"data_batch_{i}"] = _dump(
            {b"batch_label": b"x", b"labels": [(i + j) % 10 for j in range(4)], b"data": _cifar_images(4, rng),
             b"filenames": [b"f"] * 4}
        )  # fmt: skip
    files["test_batch"] = _dump({b"labels": [0, 1, 2], b"data": _cifar_images(3, rng)})
    files["batches.meta"] = _dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return files


def _cifar100_files(rng) -> dict[str, bytes]:
    return {
        "train": _dump(
            {b"fine_labels": [5, 99, 0, 42], b"coarse_labels": [1, 2, 3, 4], b"data": _cifar_images(4, rng)}
        ),
        "test": _dump({b"fine_labels": [7, 8], b"coarse_labels": [0, 0], b"data": _cifar_images(2, rng)}),
        "meta": _dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": []}),
    }


def _write_tree(root: Path, folder: str, files: dict[str, bytes]) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def _write_tar(path: Path, folder: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _expected_x(files: dict[str, bytes], names: list[str]) -> torch.Tensor:
    rows = np.concatenate([pickle.loads(files[n], encoding="bytes")[b"data"] for n in names])
    # CIFAR row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane
    img = np.stack([rows[:, 1024 * c : 1024 * (c + 1)].reshape(-1, 32, 32) for c in range(3)], axis=1)
    return torch.from_numpy(img.astype(np.float32) / 255)


@pytest.mark.parametrize("form", ["folder", "tar", "root_is_folder"])
def test_cifar10_archive_forms(tmp_path, form):
    files = _cifar10_files(np.random.default_rng(0))
    if form == "tar":
        _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
        root = tmp_path
    else:
        folder = _write_tree(tmp_path, "cifar-10-batches-py", files)
        root = folder if form == "root_is_folder" else tmp_path
    d = build_dataset("cifar10", root=str(root))
    assert d.train.x.shape == (20, 3, 32, 32) and d.test.x.shape == (3, 3, 32, 32)
    assert d.num_classes == 10 and d.classes == [f"c{i}" for i in range(10)]
    assert d.train.y.tolist() == [(i + j) % 10 for i in range(1, 6) for j in range(4)]
    assert torch.equal(d.train.x, _expected_x(files, [f"data_batch_{i}" for i in range(1, 6)]))
    assert torch.equal(d.test.x, _expected_x(files, ["test_batch"]))
    assert d.mean == pytest.approx((0.4914, 0.4822, 0.4465))


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_cifar100_archive_forms(tmp_path, form):
    files = _cifar100_files(np.random.default_rng(1))
    if form == "tar":
        _write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    else:
        _write_tree(tmp_path, "cifar-100-python", files)
    d = build_dataset("cifar100", root=str(tmp_path))
    assert d.num_classes == 100 and d.classes[:2] == ["f0", "f1"] and len(d.classes) == 100
    assert d.train.y.tolist() == [5, 99, 0, 42] and d.test.y.tolist() == [7, 8]
    assert torch.equal(d.train.x, _expected_x(files, ["train"]))
    assert torch.equal(d.test.x, _expected_x(files, ["test"]))


def test_cifar_missing_error_says_where(tmp_path):
    with pytest.raises(KDLabError, match=r"cifar-10-batches-py/.*cifar-10-python\.tar\.gz.*cs\.toronto\.edu"):
        build_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(KDLabError, match=r"cifar-100-python/.*cifar-100-python\.tar\.gz.*download it by hand"):
        build_dataset("cifar100", root=str(tmp_path))


# ------------------------------------------------------------------------------------------- image folders

COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "eel": (0, 255, 0)}


def _png_tree(root: Path, test_name: str = "val", per_class: int = 3) -> None:
    from PIL import Image

    for split, n in (("train", per_class), (test_name, 1)):
        for cls, color in COLORS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 10), color).save(d / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("test_name", ["val", "test"])
def test_imagefolder(tmp_path, test_name):
    _png_tree(tmp_path, test_name)
    d = build_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert d.classes == ["cat", "dog", "eel"] and d.num_classes == 3
    assert d.train.x.shape == (9, 3, 8, 8) and d.test.x.shape == (3, 3, 8, 8)
    assert d.train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and d.test.y.tolist() == [0, 1, 2]
    for x, y in zip(d.train.x, d.train.y):
        color = torch.tensor(COLORS[d.classes[y]], dtype=torch.float32) / 255
        assert torch.allclose(x, color[:, None, None].expand(3, 8, 8), atol=1 / 255)
    g = build_dataset("imagefolder", root=str(tmp_path), image_size=5, channels=1)
    assert g.train.x.shape == (9, 1, 5, 5) and len(g.mean) == 1


def test_imagefolder_errors(tmp_path):
    with pytest.raises(KDLabError, match="root="):
        build_dataset("imagefolder")
    with pytest.raises(KDLabError, match="train/"):
        build_dataset("imagefolder", root=str(tmp_path))
    _png_tree(tmp_path)
    with pytest.raises(KDLabError, match="channels"):
        build_dataset("imagefolder", root=str(tmp_path), channels=2)


def _tiny_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    from PIL import Image

    colors = {"n02": (250, 10, 10), "n01": (10, 10, 250)}
    for wnid, color in colors.items():
        d = root / "train" / wnid / "images"
        d.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), color).save(d / f"{wnid}_{i}.JPEG", format="JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n02", "n01", "n02"]):
        Image.new("RGB", (16, 16), colors[wnid]).save(root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t15\t15")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\nn03\tother\n")
    return colors


def test_tiny_imagenet(tmp_path):
    colors = _tiny_tree(tmp_path / "tiny-imagenet-200")
    d = build_dataset("tiny_imagenet", root=str(tmp_path), image_size=8)  # the parent folder works too
    assert d.num_classes == 2 and d.classes == ["goldfish", "salamander"]
    assert d.train.x.shape == (4, 3, 8, 8) and d.train.y.tolist() == [0, 0, 1, 1]
    assert d.test.x.shape == (3, 3, 8, 8) and d.test.y.tolist() == [1, 0, 1]
    for x, y in zip(d.test.x, d.test.y):
        color = torch.tensor(colors[["n01", "n02"][y]], dtype=torch.float32) / 255
        assert (x - color[:, None, None]).abs().max() < 0.05  # JPEG is lossy
    s = build_dataset("tiny_imagenet", root=str(tmp_path / "tiny-imagenet-200"), image_size=8, stream=True)
    assert isinstance(s.train, StreamSplit) and s.input_shape == (3, 8, 8)
    assert torch.equal(s.test.x[torch.arange(3)], d.test.x)


def test_tiny_imagenet_bad_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(KDLabError, match="val_annotations.txt"):
        build_dataset("tiny_imagenet", root=str(tmp_path))


# --------------------------------------------------------------------------------------------- streaming


def test_stream_loader_matches_tensor_loader(tmp_path):
    _png_tree(tmp_path, per_class=5)
    mem = build_dataset("imagefolder", root=str(tmp_path), image_size=6)
    st = build_dataset("imagefolder", root=str(tmp_path), image_size=6, stream=True)
    assert isinstance(st.train, StreamSplit) and len(st.train) == 15
    assert st.input_shape == (3, 6, 6) and torch.equal(st.train.y, mem.train.y)
    assert torch.equal(st.train.x[2], mem.train.x[2]) and torch.equal(st.train.x[3:7], mem.train.x[3:7])
    assert st.mean == pytest.approx(mem.mean, abs=1e-6)
    ref = make_loader(mem.train, 4, shuffle=True, drop_last=False, seed=5)
    assert isinstance(ref, TensorLoader)
    for workers in (0, 2):
        loader = make_loader(st.train, 4, shuffle=True, drop_last=False, seed=5, num_workers=workers)
        assert isinstance(loader, StreamLoader) and len(loader) == 4
        got = list(loader.iter_epoch(3))
        want = list(ref.iter_epoch(3))
        assert len(got) == len(want) == 4
        for (x, y, i), (xr, yr, ir) in zip(got, want):
            assert x.dtype == torch.float32 and y.dtype == torch.int64 and i.dtype == torch.int64
            assert torch.equal(x, xr) and torch.equal(y, yr) and torch.equal(i, ir)
    sub = st.train.subset(torch.tensor([0, 14]))
    assert len(sub) == 2 and torch.equal(sub.x[torch.arange(2)], mem.train.x[[0, 14]])


def test_imagenet_is_streamed(tmp_path):
    _png_tree(tmp_path)
    d = build_dataset("imagenet", root=str(tmp_path), image_size=8)
    assert isinstance(d.train, StreamSplit) and isinstance(d.test, StreamSplit)
    x, y = d.train.get_batch(torch.tensor([0, 8]))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 2]


# ------------------------------------------------------------------------------------------ TensorLoader


def _split(n: int = 103) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).reshape(n, 1).repeat(1, 3), torch.arange(n) % 7)


def _orders(loader, epoch):
    return torch.cat([idx for _, _, idx in loader.iter_epoch(epoch)])


def test_tensor_loader_epoch_order_reproducible():
    s = _split()
    a = TensorLoader(s, 10, shuffle=True, drop_last=False, seed=1)
    b = TensorLoader(s, 10, shuffle=True, drop_last=False, seed=1)
    _orders(a, 0)  # iterating other epochs first must not matter
    assert torch.equal(_orders(a, 4), _orders(b, 4))
    assert not torch.equal(_orders(a, 4), _orders(a, 5))
    c = TensorLoader(s, 10, shuffle=True, drop_last=False, seed=2)
    assert not torch.equal(_orders(a, 4), _orders(c, 4))


def test_tensor_loader_covers_each_index_once_and_batches_match():
    s = _split()
    loader = TensorLoader(s, 10, shuffle=True, drop_last=False, seed=0)
    assert len(loader) == 11
    batches = list(loader.iter_epoch(2))
    assert len(batches) == 11 and [len(b[2]) for b in batches] == [10] * 10 + [3]
    order = torch.cat([b[2] for b in batches])
    assert torch.equal(torch.sort(order).values, torch.arange(103))
    assert not torch.equal(order, torch.arange(103))
    for x, y, idx in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and idx.dtype == torch.int64
        assert torch.equal(x, s.x[idx]) and torch.equal(y, s.y[idx])


def test_tensor_loader_drop_last_and_no_shuffle():
    s = _split()
    loader = TensorLoader(s, 10, shuffle=True, drop_last=True, seed=0)
    assert len(loader) == 10
    batches = list(loader.iter_epoch(0))
    assert len(batches) == 10 and all(len(b[2]) == 10 for b in batches)
    assert len(set(torch.cat([b[2] for b in batches]).tolist())) == 100
    plain = TensorLoader(s, 50, shuffle=False, drop_last=False)
    assert torch.equal(_orders(plain, 0), torch.arange(103)) and len(plain) == 3
    assert len(TensorLoader(s, 200, drop_last=True)) == 0


def test_tensor_loader_resident_flag_same_batches():
    s = Split(torch.rand(30, 2, 4, 4).double(), torch.arange(30, dtype=torch.int32))
    a = TensorLoader(s, 8, shuffle=True, seed=3, resident=True)
    b = TensorLoader(s, 8, shuffle=True, seed=3, resident=False)
    for (xa, ya, ia), (xb, yb, ib) in zip(a.iter_epoch(1), b.iter_epoch(1)):
        assert xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
