"""Training-set corruptions for robustness studies: label noise and class imbalance.

Only the **training** split is corrupted; the test split is never touched (``corrupt_dataset`` returns a new
``Dataset`` holding the very same test ``Split`` object). Every draw comes from one CPU ``torch.Generator``
seeded with ``spec.seed`` (or the run's seed when that is ``None``), so a corruption is a pure function of
(training split, spec, seed) and is identical across machines.

**Order.** Imbalance first, then noise on the samples that were kept. Noise rates are therefore rates of the
kept (imbalanced) training set, and the per-class imbalance counts are counts of *true* labels.

**Label noise** (``NoiseSpec``):

- ``symmetric``: exactly ``round(rate * N)`` samples are selected with a seeded permutation (so the selected
  fraction is exact, not binomial). With ``exclude_true: true`` (default) each selected label is replaced by a
  class drawn uniformly from the *other* C-1 classes, so exactly ``round(rate * N)`` labels change. With
  ``exclude_true: false`` it is drawn uniformly from all C classes, a selected label keeps its value with
  probability 1/C, and the number of *changed* labels is random (expected ``rate * N * (C-1)/C``); the record
  gives both ``selected`` and ``flipped`` (changed).
- ``asymmetric``: class-dependent flips ``c -> map[c]``. For every source class ``c`` with ``map[c] != c``,
  exactly ``round(rate * n_c)`` of its samples (seeded draw) get the label ``map[c]``; other classes are clean,
  so the overall realised rate is at most about ``rate``. The map is, in order of precedence: the spec's ``map``;
  the CIFAR-10 map of Patrini et al. (CVPR 2017) — truck→automobile, bird→airplane, deer→horse, cat↔dog —
  when the dataset's class names are the CIFAR-10 names; the CIFAR-100 map "next fine class within the same
  superclass" (cyclic, in fine-label order) when they are the CIFAR-100 fine names (the superclass table is
  below; :func:`superclass_map` builds the same map from any coarse-label list); else the cyclic map
  ``c -> (c + 1) mod C``.

**Class imbalance** (``ImbalanceSpec``), with ``n_max`` = the spec's ``n_max`` or, by default, the size of the
smallest class of the training split (so every class can supply its quota; on a balanced set this is the
class size):

- ``exponential`` (Cui et al., CVPR 2019): class ``i`` keeps ``n_i = floor(n_max * ratio ** (-i / (C - 1)))``.
- ``step`` (Buda et al., 2018): the last ``round(minority_fraction * C)`` classes keep ``floor(n_max / ratio)``,
  the others ``n_max``.

The kept samples of a class are the first ``n_i`` of a seeded permutation of that class (classes in index
order). ``ratio: 1`` keeps ``n_max`` per class, i.e. a balanced subset, which is the right reference point of
an imbalance sweep. ``round`` is Python's (half to even) throughout.

**Validation splits.** Corrupt *before* carving a validation split out of the training data, so that model
selection (e.g. an early-stopped teacher) sees the same noisy labels as training and never a clean label.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from kdlab.data.base import Dataset, Split
from kdlab.errors import KDLabError
from kdlab.schema import Strict

# ------------------------------------------------------------------------------------------------ specs


class NoiseSpec(Strict):
    """Label noise on the training labels (see the module docstring for the exact draws)."""

    kind: Literal["symmetric", "asymmetric"] = Field(
        "symmetric", description="symmetric: to other classes uniformly; asymmetric: class c -> map[c]"
    )
    rate: float = Field(
        ...,
        ge=0.0,
        lt=1.0,
        description="fraction of the samples (of each mapped class, asymmetric) whose label is replaced",
    )
    exclude_true: bool = Field(
        True, description="symmetric: draw the new label from the other C-1 classes (so every selected label changes)"
    )
    map: dict[int, int] | None = Field(
        None,
        description="asymmetric only: source class -> target class (default: the CIFAR-10/100 maps, else c -> c+1)",
    )

    @model_validator(mode="after")
    def _map_only_asymmetric(self) -> NoiseSpec:
        if self.map is not None and self.kind != "asymmetric":
            raise ValueError("`map` applies to kind: asymmetric only")
        return self


class ImbalanceSpec(Strict):
    """Long-tailed (exponential) or step imbalance of the training split."""

    kind: Literal["exponential", "step"] = Field(
        "exponential", description="exponential (Cui et al. 2019) or step (Buda et al. 2018) class sizes"
    )
    ratio: float = Field(..., ge=1.0, description="n_max / n_min")
    minority_fraction: float = Field(0.5, ge=0.0, le=1.0, description="step only: mu, the fraction of minority classes")
    n_max: int | None = Field(
        None, gt=0, description="the largest class size kept; None: the smallest class size of the training split"
    )


class CorruptionSpec(Strict):
    """``data.corruption`` of a recipe: imbalance first, then noise; ``seed: null`` uses the run's seed."""

    noise: NoiseSpec | None = Field(None, description="label noise, applied after the imbalance")
    imbalance: ImbalanceSpec | None = Field(None, description="class imbalance of the training split")
    seed: int | None = Field(None, description="seed of the draws; null: the run's seed")

    @field_validator("noise", "imbalance", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == {} else v


# -------------------------------------------------------------------------------------------- class maps

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Patrini et al. 2017 (and Han et al. 2018, Co-teaching): the classic CIFAR-10 asymmetric flips.
CIFAR10_FLIPS = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}

# CIFAR-100 superclasses (coarse labels, in coarse-label order) and their fine classes, as on the CIFAR page.
CIFAR100_SUPERCLASSES: dict[str, list[str]] = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def _norm(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def superclass_map(coarse: Sequence[int]) -> dict[int, int]:
    """``coarse[i]`` is the superclass of fine class ``i``; each class maps to the next fine class (in index
    order) of its superclass, cyclically. A superclass with a single member maps to itself (no flip)."""
    members: dict[int, list[int]] = {}
    for fine, c in enumerate(coarse):
        members.setdefault(int(c), []).append(fine)
    out: dict[int, int] = {}
    for group in members.values():
        for j, fine in enumerate(group):
            out[fine] = group[(j + 1) % len(group)]
    return out


def asymmetric_map(num_classes: int, class_names: Sequence[str] | None = None) -> tuple[dict[int, int], str]:
    """The default asymmetric map for a dataset and the name of the convention used."""
    names = [_norm(n) for n in class_names] if class_names else []
    if len(names) == num_classes == 10 and sorted(names) == sorted(CIFAR10_NAMES):
        idx = {n: i for i, n in enumerate(names)}
        return {idx[a]: idx[b] for a, b in CIFAR10_FLIPS.items()}, "cifar10-patrini"
    fine_to_coarse = {_norm(f): ci for ci, fines in enumerate(CIFAR100_SUPERCLASSES.values()) for f in fines}
    if len(names) == num_classes == 100 and set(names) == set(fine_to_coarse):
        return superclass_map([fine_to_coarse[n] for n in names]), "cifar100-next-in-superclass"
    return {c: (c + 1) % num_classes for c in range(num_classes)}, "cyclic"


# ---------------------------------------------------------------------------------------------- corrupt


def _counts(y: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def imbalance_counts(spec: ImbalanceSpec, counts: Sequence[int]) -> list[int]:
    """Samples kept per class (class index order) for a split with ``counts`` samples per class."""
    C = len(counts)
    if C < 2:
        raise KDLabError("class imbalance needs at least 2 classes")
    n_max = spec.n_max if spec.n_max is not None else min(counts)
    if n_max <= 0:
        raise KDLabError(f"class imbalance: a class of the training split is empty (counts {list(counts)})")
    if spec.kind == "exponential":
        target = [math.floor(n_max * spec.ratio ** (-i / (C - 1))) for i in range(C)]
    else:
        m = round(spec.minority_fraction * C)
        target = [n_max] * (C - m) + [math.floor(n_max / spec.ratio)] * m
    for c, (t, have) in enumerate(zip(target, counts)):
        if t < 1:
            raise KDLabError(
                f"class imbalance {spec.kind} ratio {spec.ratio:g} leaves class {c} with no sample "
                f"(n_max {n_max}); lower the ratio"
            )
        if t > have:
            raise KDLabError(
                f"class imbalance: class {c} has {have} samples but needs {t} (n_max {n_max}); lower n_max"
            )
    return target


def corrupt(
    split: Split,
    num_classes: int,
    spec: CorruptionSpec,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> tuple[Split, dict[str, Any]]:
    """Corrupt a training split; returns ``(new split, record)``. The input split is not modified.

    The record (plain Python, JSON-safe) holds: ``seed`` (the one used), ``order``, ``counts_before`` and
    ``counts_after`` (true labels per class), ``counts_observed`` (labels after noise), ``kept_indices``
    (into the input split, sorted), ``clean_labels`` and ``noisy_labels`` (of the kept samples, in the new
    split's order), ``flipped_indices`` (into the new split), ``selected`` (samples drawn for noise),
    ``flipped`` (labels actually changed), ``realised_rate`` (flipped / kept), and the resolved specs.
    """
    if not isinstance(split, Split):
        raise KDLabError(f"corruption needs an in-memory Split (tensors), got {type(split).__name__}")
    if num_classes < 2:
        raise KDLabError("corruption needs at least 2 classes")
    use_seed = int(spec.seed if spec.seed is not None else seed)
    gen = torch.Generator().manual_seed(use_seed)
    y0 = split.y.long().cpu()
    if len(y0) and (int(y0.min()) < 0 or int(y0.max()) >= num_classes):
        raise KDLabError(f"labels must lie in 0..{num_classes - 1}")
    counts_before = _counts(y0, num_classes)
    record: dict[str, Any] = {
        "seed": use_seed,
        "order": "imbalance, then noise on the kept samples",
        "num_classes": num_classes,
        "spec": spec.model_dump(),
        "counts_before": counts_before,
    }

    # --- imbalance
    if spec.imbalance is not None:
        target = imbalance_counts(spec.imbalance, counts_before)
        picked = []
        for c in range(num_classes):
            members = torch.nonzero(y0 == c).flatten()
            perm = torch.randperm(len(members), generator=gen)
            picked.append(members[perm[: target[c]]])
        kept = torch.sort(torch.cat(picked)).values
        n_max = spec.imbalance.n_max if spec.imbalance.n_max is not None else min(counts_before)
        record["imbalance"] = {"n_max": n_max, "target": target}
    else:
        kept = torch.arange(len(y0))
    clean = y0[kept]
    noisy = clean.clone()
    record["counts_after"] = _counts(clean, num_classes)
    N = len(clean)

    # --- noise
    selected = torch.zeros(0, dtype=torch.long)
    if spec.noise is not None and N:
        nz = spec.noise
        if nz.kind == "symmetric":
            k = round(nz.rate * N)
            selected = torch.randperm(N, generator=gen)[:k]
            if nz.exclude_true:
                offset = torch.randint(1, num_classes, (k,), generator=gen)
                noisy[selected] = (clean[selected] + offset) % num_classes
            else:
                noisy[selected] = torch.randint(0, num_classes, (k,), generator=gen)
            record["noise"] = {"map": None, "convention": "uniform-other" if nz.exclude_true else "uniform-all"}
        else:
            if nz.map is not None:
                cmap, conv = dict(nz.map), "explicit"
                bad = [(a, b) for a, b in cmap.items() if not (0 <= a < num_classes and 0 <= b < num_classes)]
                if bad:
                    raise KDLabError(f"noise.map entries out of 0..{num_classes - 1}: {bad}")
            else:
                cmap, conv = asymmetric_map(num_classes, class_names)
            picked = []
            per_class = {}
            for c in range(num_classes):
                dst = cmap.get(c, c)
                if dst == c:
                    continue
                members = torch.nonzero(clean == c).flatten()
                k = round(nz.rate * len(members))
                chosen = members[torch.randperm(len(members), generator=gen)[:k]]
                noisy[chosen] = dst
                picked.append(chosen)
                per_class[c] = {"to": dst, "n": len(members), "flipped": k}
            selected = torch.sort(torch.cat(picked)).values if picked else selected
            record["noise"] = {
                "map": {int(a): int(b) for a, b in cmap.items()},
                "convention": conv,
                "per_class": per_class,
            }
    changed = torch.nonzero(noisy != clean).flatten()
    record.update(
        kept_indices=kept.tolist(),
        clean_labels=clean.tolist(),
        noisy_labels=noisy.tolist(),
        counts_observed=_counts(noisy, num_classes),
        selected=int(len(selected)),
        flipped=int(len(changed)),
        flipped_indices=changed.tolist(),
        realised_rate=(len(changed) / N) if N else 0.0,
    )
    x = split.x if spec.imbalance is None else split.x[kept]
    return Split(x, noisy.to(split.y.dtype)), record


def corrupt_dataset(
    ds: Dataset, spec: CorruptionSpec | dict[str, Any], seed: int, *, return_record: bool = False
) -> Dataset | tuple[Dataset, dict[str, Any]]:
    """A new ``Dataset`` whose training split is corrupted; ``test`` is the very same Split object.
    ``return_record=True`` returns ``(dataset, record)`` (see :func:`corrupt`)."""
    if isinstance(spec, dict):
        spec = CorruptionSpec.model_validate(spec)
    train, record = corrupt(ds.train, ds.num_classes, spec, seed, class_names=ds.classes or None)
    parts = []
    if spec.imbalance is not None:
        parts.append(f"imbalance {spec.imbalance.kind} ratio {spec.imbalance.ratio:g} ({len(train)} kept)")
    if spec.noise is not None:
        parts.append(f"{spec.noise.kind} noise rate {spec.noise.rate:g} ({record['flipped']} labels changed)")
    notes = (ds.notes + "; " if ds.notes else "") + "corrupted training split: " + (", ".join(parts) or "none")
    new = dataclasses.replace(ds, train=train, notes=notes)
    return (new, record) if return_record else new


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Save a corruption record as JSON (e.g. ``run_dir / "corruption.json"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


__all__ = [
    "CIFAR100_SUPERCLASSES",
    "CIFAR10_FLIPS",
    "CIFAR10_NAMES",
    "CorruptionSpec",
    "ImbalanceSpec",
    "NoiseSpec",
    "asymmetric_map",
    "corrupt",
    "corrupt_dataset",
    "imbalance_counts",
    "superclass_map",
    "write_record",
]
