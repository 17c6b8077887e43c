"""imagefolder from .tar/.tar.gz archives of class folders, the decoded uint8 cache, and geometry defaults
(grayscale stays grayscale, one square size is kept)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.data import build_dataset
from kdlab.data import folder as F
from kdlab.errors import KDLabError

COLORS = {"ant": (200, 30, 30), "bee": (30, 30, 200)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_CACHE", str(tmp_path / "cache"))


def _image_bytes(color, size=(8, 8), mode="RGB", fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(sum(color) + size[0])
    arr = np.clip(np.array(color, dtype=np.int16)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    im = Image.fromarray(arr.astype(np.uint8), "RGB").convert(mode)
    im.save(buf, format=fmt)
    return buf.getvalue()


def _members(split: str, per_class: int, **kw) -> dict[str, bytes]:
    out = {}
    for cls, color in COLORS.items():
        for i in range(per_class):
            fmt = "JPEG" if i % 2 else "PNG"
            out[f"{split}/{cls}/{i}.{fmt.lower()}"] = _image_bytes(tuple(c + 5 * i for c in color), fmt=fmt, **kw)
    return out


def _write_tar(path: Path, members: dict[str, bytes], prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo(prefix + "README.txt")
        readme.size = 2
        tar.addfile(readme, io.BytesIO(b"hi"))
    return path


def _unpack(members: dict[str, bytes], root: Path) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_archives_equal_the_unpacked_folder_and_load_from_the_cache(tmp_path, monkeypatch):
    train, test = _members("train", 3), _members("test", 2)
    arch = tmp_path / "arch"
    arch.mkdir()
    _write_tar(arch / "set-train.tar.gz", train, prefix="set/")  # a top-level folder in the archive is fine
    _write_tar(arch / "set-test.tar", test)
    ref = build_dataset("imagefolder", root=str(_unpack({**train, **test}, tmp_path / "plain")), cache=False)
    d = build_dataset("imagefolder", root=str(arch))
    assert d.classes == ["ant", "bee"] and d.input_shape == (3, 8, 8)
    assert d.train.y.tolist() == [0, 0, 0, 1, 1, 1] and d.test.y.tolist() == [0, 0, 1, 1]
    assert torch.equal(d.train.x, ref.train.x) and torch.equal(d.test.x, ref.test.x)
    x = (d.train.x * 255).round().double().transpose(0, 1).reshape(3, -1) / 255  # float64 stats of the uint8s
    assert d.mean == pytest.approx(x.mean(1).tolist(), abs=1e-12)
    assert d.std == pytest.approx(x.std(1).tolist(), abs=1e-12)
    assert "decoded now" in d.notes

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache holds this archive")

    sub = build_dataset("imagefolder", root=str(arch), train_subset=4, test_subset=2, seed=1)
    assert sub.train.y.tolist() == [0, 0, 1, 1] and sub.test.y.tolist() == [0, 1] and sub.mean == d.mean
    assert all(any(torch.equal(x, r) for r in d.train.x) for x in sub.train.x)
    monkeypatch.setattr(F, "_decode_uint8", no_decode)
    again = build_dataset("imagefolder", root=str(arch))
    assert "decoded copy" in again.notes and torch.equal(again.train.x, d.train.x) and again.mean == d.mean
    with pytest.raises(AssertionError, match="decoded again"):  # other options are another entry
        build_dataset("imagefolder", root=str(arch), image_size=4)


def test_a_changed_archive_or_folder_is_decoded_again(tmp_path):
    arch = _write_tar(tmp_path / "all.tar", {**_members("train", 2), **_members("val", 1)})
    first = build_dataset("imagefolder", root=str(arch))  # root may be the archive itself
    assert "decoded now" in first.notes and first.test.y.tolist() == [0, 1]
    changed = {**_members("train", 2), **_members("val", 1)}
    changed["train/bee/0.png"] = _image_bytes((0, 255, 0))
    _write_tar(arch, changed)
    second = build_dataset("imagefolder", root=str(arch))
    assert "decoded now" in second.notes and not torch.equal(second.train.x, first.train.x)

    plain = _unpack({**_members("train", 2), **_members("val", 1)}, tmp_path / "plain")
    assert "decoded now" in build_dataset("imagefolder", root=str(plain)).notes
    assert "decoded copy" in build_dataset("imagefolder", root=str(plain)).notes
    (plain / "train" / "ant" / "0.png").write_bytes(_image_bytes((1, 2, 3)))
    os.utime(plain / "train" / "ant" / "0.png", ns=(1, 1))
    assert "decoded now" in build_dataset("imagefolder", root=str(plain)).notes


def test_grayscale_stays_grayscale_unless_told(tmp_path):
    members = {**_members("train", 2, mode="L", size=(16, 16)), **_members("test", 1, mode="L", size=(16, 16))}
    plain = _unpack(members, tmp_path / "gray")
    g = build_dataset("imagefolder", root=str(plain))
    assert g.input_shape == (1, 16, 16) and len(g.mean) == 1 and len(g.std) == 1
    from PIL import Image

    with Image.open(plain / "train" / "ant" / "0.png") as im:
        assert torch.equal(g.train.x[0, 0], torch.from_numpy(np.array(im)).float() / 255)
    rgb = build_dataset("imagefolder", root=str(plain), channels=3, image_size=8)
    assert rgb.input_shape == (3, 8, 8) and torch.equal(rgb.train.x[:, 0], rgb.train.x[:, 2])
    a = build_dataset("imagefolder", root=str(_write_tar(tmp_path / "g.tar.gz", members)))
    assert a.input_shape == (1, 16, 16) and torch.equal(a.train.x, g.train.x)
    s = build_dataset("imagefolder", root=str(plain), stream=True)
    assert s.input_shape == (1, 16, 16)
    colour = build_dataset(
        "imagefolder", root=str(_unpack({**_members("train", 1), **_members("val", 1)}, tmp_path / "rgb"))
    )
    assert colour.input_shape == (3, 8, 8)


def test_mixed_sizes_and_bad_archives_are_one_line_errors(tmp_path):
    members = {**_members("train", 1), **_members("val", 1)}
    members["train/bee/0.png"] = _image_bytes((9, 9, 9), size=(12, 10))
    plain = _unpack(members, tmp_path / "mixed")
    with pytest.raises(KDLabError, match=r"not all one square size .*image_size"):
        build_dataset("imagefolder", root=str(plain))
    assert build_dataset("imagefolder", root=str(plain), image_size=8).input_shape == (3, 8, 8)
    arch = _write_tar(tmp_path / "only-train.tar", _members("train", 1))
    with pytest.raises(KDLabError, match=r"val/ \(or test/\)"):
        build_dataset("imagefolder", root=str(arch))
    broken = tmp_path / "broken" / "x.tar.gz"
    broken.parent.mkdir()
    broken.write_bytes(_write_tar(tmp_path / "ok.tar.gz", members).read_bytes()[:100])
    with pytest.raises(KDLabError, match=r"cannot read the archive .*x\.tar\.gz"):
        build_dataset("imagefolder", root=str(broken.parent))
    with pytest.raises(KDLabError, match="stream=True needs an unpacked folder"):
        build_dataset("imagefolder", root=str(tmp_path / "ok.tar.gz"), stream=True)
    with pytest.raises(KDLabError, match="does not exist"):
        build_dataset("imagefolder", root=str(tmp_path / "nowhere"))


def test_the_cifar10_recipes_point_at_the_shared_jpeg_archives():
    from kdlab.data.archive import find_archives
    from kdlab.recipe import load_recipe

    repo = Path(__file__).resolve().parents[1]
    r = load_recipe([str(repo / "recipes/cifar10/resnet56-resnet20.yaml"), str(repo / "recipes/methods/kd.yaml")])
    root = Path(r.data.kwargs["root"])
    assert r.data.name == "imagefolder" and root == (repo.parent / "shared/data/cifar10-jpeg").resolve()
    assert load_recipe(r.teacher.recipe).data.kwargs["root"] == str(root)
    if root.is_dir():  # where the shared data exists, both archives are found there
        assert [a.name for a in find_archives(root)] == ["cifar10-jpeg-test.tar.gz", "cifar10-jpeg-train.tar.gz"]
