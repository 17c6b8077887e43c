"""The `arrays` dataset: a user's own .npz/.npy/.pt/.safetensors files, with declared or computed normalisation,
checked against statistics computed here with numpy."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdlab.data import build_dataset
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe


def _images(n, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8), (np.arange(n) % classes).astype(np.int64)


def test_one_npz_of_uint8_grayscale_images_with_auto_normalisation(tmp_path):
    xtr, ytr = _images(30)
    xte, yte = _images(9, seed=1)
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    ds = build_dataset("arrays", path=str(tmp_path / "d.npz"))
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 3 and len(ds.train) == 30 and len(ds.test) == 9
    ref = xtr.astype(np.float64) / 255.0  # uint8 images are read as [0, 1], as kdlab predict reads them
    assert np.allclose(ds.train.x.numpy()[:, 0], ref, atol=1e-7)
    assert ds.mean == pytest.approx((ref.mean(),)) and ds.std == pytest.approx((ref.std(ddof=1),))
    assert torch.equal(ds.test.y, torch.from_numpy(yte))


def test_train_and_test_files_in_every_format_and_declared_stats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32) * 5 + 2
    y = np.arange(40) % 4
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    torch.save({"x": torch.from_numpy(x[:10]), "y": torch.from_numpy(y[:10])}, tmp_path / "t.pt")
    save_file({"x": torch.from_numpy(x[:10]), "y": torch.from_numpy(y[:10])}, str(tmp_path / "t.safetensors"))
    for test in ("t.pt", "t.safetensors"):
        ds = build_dataset(
            "arrays",
            train=[str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
            test=str(tmp_path / test),
            mean=[1.0, 2.0, 3.0],
            std=2.0,
        )
        assert ds.input_shape == (3,) and ds.num_classes == 4
        assert ds.mean == (1.0, 2.0, 3.0) and ds.std == (2.0, 2.0, 2.0)
        assert torch.equal(ds.test.x, torch.from_numpy(x[:10]))
    ds = build_dataset("arrays", train=[str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], test_fraction=0.25)
    assert ds.mean == pytest.approx(tuple(ds.train.x.double().mean(0).tolist()))  # per feature for vectors
    assert len(ds.test) == 10 and len(ds.train) == 30
    assert torch.bincount(ds.test.y).tolist() == [3, 3, 2, 2]  # stratified: 2.5 each, ties to lower classes
    joined = torch.cat([ds.train.x, ds.test.x])  # a partition of the data, nothing duplicated or lost
    assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple, torch.from_numpy(x).tolist()))
    none = build_dataset(
        "arrays", train=[str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], test_fraction=0.25, mean="none", std="none"
    )
    assert none.mean == (0.0,) * 3 and none.std == (1.0,) * 3


def test_channels_last_images_move_to_channels_first(tmp_path):
    x = np.random.default_rng(0).random((8, 5, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 2)
    ds = build_dataset("arrays", path=str(tmp_path / "d.npz"), test_fraction=0.5)
    assert ds.input_shape == (3, 5, 5) and len(ds.mean) == 3
    assert np.allclose(ds.mean, x[np.sort(_train_rows(ds, x))].reshape(-1, 3).mean(0), atol=1e-6)


def _train_rows(ds, x):
    flat = torch.from_numpy(x).movedim(-1, 1).reshape(len(x), -1)
    return [int((flat == r).all(1).nonzero()[0]) for r in ds.train.x.reshape(len(ds.train), -1)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give `path:`"),
        ({"path": "nowhere.npz"}, "data file not found: nowhere.npz"),
        ({"path": "d.csv"}, "unsupported suffix '.csv'"),
        ({"path": "{tmp}/d.npz"}, "no test data"),
        ({"path": "{tmp}/d.npz", "test_fraction": 0.5, "x_key": "inputs"}, "no array 'inputs'"),
        ({"path": "{tmp}/d.npz", "test_fraction": 0.5, "mean": [0, 0]}, "data.kwargs.mean: 2 values for 1 channels"),
        ({"path": "{tmp}/neg.npz", "test_fraction": 0.5}, "class indices 0..K-1"),
    ],
)
def test_errors_are_one_line(tmp_path, kwargs, message):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 2), np.float32), y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "neg.npz", x=np.zeros((4, 2, 2), np.float32), y=np.array([0, -1, 0, 1]))
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(KDLabError) as e:
        build_dataset("arrays", **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_recipe_names_arrays_with_a_path_next_to_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    xtr, ytr = _images(12)
    np.savez(tmp_path / "p" / "d.npz", x_train=xtr, y_train=ytr, x_test=xtr[:4], y_test=ytr[:4])
    (tmp_path / "p" / "r.yaml").write_text("data: {name: arrays, kwargs: {path: ./d.npz}}\nstudent: smallcnn\n")
    monkeypatch.chdir(tmp_path)
    from kdlab.engine.run import build_data

    r = load_recipe("p/r.yaml")
    assert r.data.kwargs["path"] == str((tmp_path / "p" / "d.npz").resolve())
    assert len(build_data(r).train) == 12
