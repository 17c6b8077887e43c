"""Label noise and class imbalance of the training split (kdlab.data.corrupt)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdlab.data.base import Dataset, Split
from kdlab.data.corrupt import (
    CIFAR10_NAMES,
    CIFAR100_SUPERCLASSES,
    CorruptionSpec,
    ImbalanceSpec,
    NoiseSpec,
    asymmetric_map,
    corrupt,
    corrupt_dataset,
    superclass_map,
    write_record,
)
from kdlab.errors import KDLabError


def _split(per_class=(60, 55, 50, 70, 65), dim=3) -> Split:
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(per_class)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(123))]
    x = torch.arange(len(y) * dim, dtype=torch.float32).reshape(len(y), dim)
    return Split(x, y)


def _dataset(names=None) -> Dataset:
    train = _split()
    test = _split((10, 10, 10, 10, 10))
    return Dataset("toy", train, test, 5, (0.0,), (1.0,), classes=names or [str(i) for i in range(5)])


def spec(**kw) -> CorruptionSpec:
    return CorruptionSpec.model_validate(kw)


# ------------------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 0.83])
def test_symmetric_rate_is_exact_and_never_true_label(rate):
    s = _split()
    out, rec = corrupt(s, 5, spec(noise={"rate": rate}), seed=3)
    n = len(s)
    changed = (out.y != s.y).sum().item()
    assert changed == round(rate * n) == rec["flipped"] == rec["selected"]
    assert rec["realised_rate"] == pytest.approx(round(rate * n) / n)
    idx = torch.tensor(rec["flipped_indices"], dtype=torch.long)
    assert torch.all(out.y[idx] != s.y[idx])
    assert torch.equal(out.x, s.x)  # no imbalance: same samples, same order
    assert rec["noisy_labels"] == out.y.tolist() and rec["clean_labels"] == s.y.tolist()
    assert s.y.dtype == out.y.dtype


def test_symmetric_noise_hits_every_other_class():
    s = _split((400, 400, 400, 400, 400))
    out, rec = corrupt(s, 5, spec(noise={"rate": 0.5}), seed=0)
    idx = torch.tensor(rec["flipped_indices"])
    pairs = set(zip(s.y[idx].tolist(), out.y[idx].tolist()))
    assert pairs == {(a, b) for a in range(5) for b in range(5) if a != b}


def test_symmetric_including_true_class_changes_at_most_selected():
    s = _split((400, 400, 400, 400, 400))
    out, rec = corrupt(s, 5, spec(noise={"rate": 0.5, "exclude_true": False}), seed=0)
    assert rec["selected"] == round(0.5 * len(s))
    assert rec["flipped"] == (out.y != s.y).sum().item() < rec["selected"]
    # about 1/C of the selected labels keep their class
    kept_same = rec["selected"] - rec["flipped"]
    assert 0.1 * rec["selected"] < kept_same < 0.3 * rec["selected"]


@pytest.mark.parametrize("cmap", [None, {0: 3, 3: 0, 4: 2}])
def test_asymmetric_flips_follow_map_with_exact_counts(cmap):
    s = _split()
    noise = {"kind": "asymmetric", "rate": 0.4} | ({"map": cmap} if cmap else {})
    out, rec = corrupt(s, 5, spec(noise=noise), seed=1)
    used = cmap or {c: (c + 1) % 5 for c in range(5)}
    assert {int(k): v for k, v in rec["noise"]["map"].items()} == used
    changed = torch.nonzero(out.y != s.y).flatten()
    for i in changed.tolist():
        assert out.y[i].item() == used[s.y[i].item()]
    for c in range(5):
        members = s.y == c
        flips = (out.y[members] != c).sum().item()
        expected = round(0.4 * members.sum().item()) if used.get(c, c) != c else 0
        assert flips == expected
    assert rec["flipped"] == len(changed)


def test_asymmetric_default_maps_by_class_names():
    m, conv = asymmetric_map(10, CIFAR10_NAMES)
    assert conv == "cifar10-patrini"
    n = {name: i for i, name in enumerate(CIFAR10_NAMES)}
    assert m == {
        n["truck"]: n["automobile"],
        n["bird"]: n["airplane"],
        n["deer"]: n["horse"],
        n["cat"]: n["dog"],
        n["dog"]: n["cat"],
    }
    # a differently ordered class list maps by name, not by index
    names = list(reversed(CIFAR10_NAMES))
    m2, _ = asymmetric_map(10, names)
    assert names[m2[names.index("truck")]] == "automobile"
    # CIFAR-100: next fine class within the superclass (fine labels are alphabetical)
    fine = sorted(f for v in CIFAR100_SUPERCLASSES.values() for f in v)
    assert len(fine) == 100
    m100, conv = asymmetric_map(100, fine)
    assert conv == "cifar100-next-in-superclass"
    for members in CIFAR100_SUPERCLASSES.values():
        ids = sorted(fine.index(f) for f in members)
        assert [m100[i] for i in ids] == ids[1:] + ids[:1]
    assert superclass_map([0, 1, 0, 1, 2]) == {0: 2, 2: 0, 1: 3, 3: 1, 4: 4}
    assert asymmetric_map(4, ["a", "b", "c", "d"]) == ({0: 1, 1: 2, 2: 3, 3: 0}, "cyclic")


def test_noise_map_out_of_range_is_an_error():
    with pytest.raises(KDLabError, match="out of"):
        corrupt(_split(), 5, spec(noise={"kind": "asymmetric", "rate": 0.2, "map": {0: 7}}), seed=0)


# --------------------------------------------------------------------------------------------- imbalance
@pytest.mark.parametrize("ratio", [1.0, 3.0, 10.0, 50.0])
def test_exponential_counts_follow_formula(ratio):
    s = _split()
    out, rec = corrupt(s, 5, spec(imbalance={"ratio": ratio}), seed=0)
    n_max = min(rec["counts_before"])
    expected = [math.floor(n_max * ratio ** (-i / 4)) for i in range(5)]
    assert torch.bincount(out.y, minlength=5).tolist() == expected == rec["counts_after"]
    # kept samples are real samples of the input, labels clean (no noise requested)
    kept = torch.tensor(rec["kept_indices"])
    assert torch.equal(out.x, s.x[kept]) and torch.equal(out.y, s.y[kept])
    assert rec["flipped"] == 0


@pytest.mark.parametrize(("ratio", "mu"), [(10.0, 0.5), (4.0, 0.2), (2.0, 1.0)])
def test_step_counts_follow_formula(ratio, mu):
    s = _split()
    out, rec = corrupt(s, 5, spec(imbalance={"kind": "step", "ratio": ratio, "minority_fraction": mu}), seed=0)
    n_max = min(rec["counts_before"])
    m = round(mu * 5)
    expected = [n_max] * (5 - m) + [math.floor(n_max / ratio)] * m
    assert torch.bincount(out.y, minlength=5).tolist() == expected


def test_explicit_n_max_and_errors():
    s = _split()
    out, _ = corrupt(s, 5, spec(imbalance={"ratio": 2.0, "n_max": 40}), seed=0)
    assert torch.bincount(out.y, minlength=5).tolist() == [math.floor(40 * 2 ** (-i / 4)) for i in range(5)]
    with pytest.raises(KDLabError, match="needs"):
        corrupt(s, 5, spec(imbalance={"ratio": 2.0, "n_max": 70}), seed=0)
    with pytest.raises(KDLabError, match="no sample"):
        corrupt(s, 5, spec(imbalance={"ratio": 1000.0}), seed=0)


def test_imbalance_then_noise_on_kept_samples():
    s = _split()
    out, rec = corrupt(s, 5, spec(imbalance={"ratio": 5.0}, noise={"rate": 0.3}), seed=4)
    n = len(out)
    assert n == sum(rec["counts_after"]) < len(s)
    assert rec["flipped"] == round(0.3 * n)
    clean = torch.tensor(rec["clean_labels"])
    assert torch.equal(clean, s.y[torch.tensor(rec["kept_indices"])])
    assert torch.bincount(clean, minlength=5).tolist() == rec["counts_after"]
    assert (out.y != clean).sum().item() == rec["flipped"]


# --------------------------------------------------------------------------------------------- seeding
def test_same_seed_same_corruption_different_seed_different():
    s = _split()
    sp = spec(imbalance={"ratio": 3.0}, noise={"rate": 0.4})
    a, ra = corrupt(s, 5, sp, seed=0)
    b, rb = corrupt(s, 5, sp, seed=0)
    c, rc = corrupt(s, 5, sp, seed=1)
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x) and ra == rb
    assert ra["kept_indices"] != rc["kept_indices"]
    assert ra["flipped_indices"] != rc["flipped_indices"]
    # spec.seed overrides the run's seed
    pinned = spec(noise={"rate": 0.4}, seed=7)
    p0, r0 = corrupt(s, 5, pinned, seed=0)
    p1, r1 = corrupt(s, 5, pinned, seed=1)
    assert torch.equal(p0.y, p1.y) and r0["seed"] == r1["seed"] == 7


def test_corrupt_dataset_leaves_test_split_untouched(tmp_path):
    ds = _dataset()
    test_y = ds.test.y.clone()
    train_y = ds.train.y.clone()
    new, rec = corrupt_dataset(ds, {"noise": {"rate": 0.5}, "imbalance": {"ratio": 2}}, seed=0, return_record=True)
    assert new.test is ds.test and torch.equal(ds.test.y, test_y)
    assert torch.equal(ds.train.y, train_y)  # input not modified in place
    assert new.num_classes == ds.num_classes and new.classes == ds.classes
    assert len(new.train) < len(ds.train) and "corrupted" in new.notes
    only = corrupt_dataset(ds, CorruptionSpec(noise=NoiseSpec(rate=0.1)), seed=0)
    assert isinstance(only, Dataset) and only.test is ds.test
    path = write_record(rec, tmp_path / "run" / "corruption.json")
    assert json.loads(path.read_text())["noisy_labels"] == new.train.y.tolist()


def test_specs_are_strict():
    with pytest.raises(ValueError, match="did you mean 'rate'"):
        NoiseSpec.model_validate({"rte": 0.2})
    with pytest.raises(ValueError):
        NoiseSpec(rate=1.0)
    with pytest.raises(ValueError):
        ImbalanceSpec(ratio=0.5)
    with pytest.raises(ValueError, match="asymmetric"):
        NoiseSpec(rate=0.2, map={0: 1})
    with pytest.raises(ValueError, match="imbalance"):
        CorruptionSpec.model_validate({"imbalanc": {"ratio": 2}})
    assert CorruptionSpec.model_validate({"noise": {"rate": 0.2}}).seed is None
