"""Teacher-derived targets for the letKD layer (Gorgun, Gurbuz, Alatan, BMVC 2023), fitted once before training.

Penultimate target (letKD-1, QuEST's codewords): K-means centres rho_k of the teacher's last-stage feature vectors
(every spatial location of every training image, no augmentation); online, a location's target is
``softmax(-tau * ||f - rho_k||^2)`` over the K centres (tau = 1 in the paper).

Intermediate target (letKD-2, the paper's "teacher decisions" over sub-classes):

1. LDA (scikit-learn ``LinearDiscriminantAnalysis``, SVD solver) on the teacher's intermediate locations, each
   labelled with its image's class; at most ``C - 1`` components (60 for CIFAR-100 in the paper).
2. Per class ``c``, K-means with ``P`` centres rho_{c,k} on that class's projected locations; the membership of a
   location is its cluster, ``m(i) = c * P + k``.
3. Prototypes: the mean of the projected locations of each sub-class.
4. ``n(i)``: the nearest prototype among all ``C * P`` of them, no label mask.
5. ``s_T[k, k'] = |{i: m(i) = k, n(i) = k'}| / |{i: m(i) = k}|`` — row-stochastic, (C*P) x (C*P).

Online, a location of an image of class y gets ``s_T[k*]`` with k* its nearest centre among the P centres of y.

K-means backend ("auto" picks by N * K, the number of vectors times the number of centres):

- ``sklearn``: ``sklearn.cluster.KMeans`` (k-means++ init, one init, ``iters`` Lloyd iterations,
  ``random_state=seed``) — used when N * K <= ``SKLEARN_MAX_WORK`` (1e8: e.g. digits, or a per-class fit).
- ``torch``: batched Lloyd k-means in torch on the term's device (CIFAR's 3.2M vectors x 4096 centres): K distinct
  random vectors as the initial centres (seeded generator), ``iters`` iterations (faiss' default 20, as in the
  authors' code), distances in row chunks, sums accumulated in float64, empty clusters re-seeded with random
  vectors. Deterministic for a seed on CPU at a given thread count (the tests run it single-threaded); on CUDA up
  to float64 summation order (the cache makes a resumed run reuse the exact same centres either way). On 2 CPU
  cores one iteration costs ~11 s for 100k x 256-d vectors and K = 4096, so CIFAR's 3.2M vectors take ~6 min per
  iteration there: use a GPU, or ``fit_samples`` to fit on a random subset.

In both backends the returned labels are the nearest-centre assignment to the *returned* centres, so for the
sub-class membership m(i) the per-class K-means labels and the label-masked nearest centre coincide (ambiguity 3 of
the research notes).

Everything is cached in ``run_dir/templates-<label>.safetensors`` with a fingerprint (what was fitted, on how many
vectors, with which seed and settings) in the metadata; a mismatching file is refitted and overwritten.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.engine.checkpoint import save_weights
from kdlab.errors import KDLabError

SKLEARN_MAX_WORK = 100_000_000  # N * K at or below which "auto" uses scikit-learn's KMeans
_CHUNK = 16384  # rows per distance block in the torch k-means and the nearest-centre searches


# ---------------------------------------------------------------------------------------------- helpers


def to_locations(t: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """(N, C, *spatial) -> (N * prod(spatial), C), locations in (n, h, w) order; ``size`` average-pools the map
    first (adaptive pooling: the paper's 2x2/stride-2 pooling when the teacher map is twice the student's). A
    (N, C) tensor is one location per sample."""
    t = as_map(t)
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = F.adaptive_avg_pool2d(t, size)
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def as_map(t: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C, 1, 1); (N, C, L) -> (N, C, L, 1); 4-D unchanged."""
    if t.dim() == 2:
        return t[:, :, None, None]
    if t.dim() == 3:
        return t[..., None]
    if t.dim() == 4:
        return t
    raise KDLabError(f"letKD needs (N, C), (N, C, L) or (N, C, H, W) features, got shape {tuple(t.shape)}")


def sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, K) between rows of x (N, D) and c (K, D), clamped at 0."""
    d = x.pow(2).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c.pow(2).sum(1)[None, :]
    return d.clamp_min_(0.0)


def nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """Index of the nearest row of c for each row of x, in row chunks (int64, on x's device)."""
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = sq_dists(x[i : i + chunk], c).argmin(1)
    return out


def subsample(n: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """Sorted indices of a seeded random subset of ``limit`` out of ``n`` rows, or None for all rows."""
    if limit is None or limit >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values


# ---------------------------------------------------------------------------------------------- k-means


def kmeans(
    x: torch.Tensor,
    k: int,
    seed: int,
    *,
    iters: int = 20,
    backend: str = "auto",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means on the rows of ``x`` (N, D): (centres (k, D) float32 CPU, labels (N,) int64 CPU), deterministic for
    ``seed``. ``backend``: "sklearn", "torch" or "auto" (scikit-learn when N * k <= SKLEARN_MAX_WORK)."""
    n = len(x)
    if k < 1:
        raise KDLabError(f"k-means needs at least one centre, got {k}")
    if n < k:
        raise KDLabError(
            f"k-means with {k} centres on only {n} teacher vectors: use fewer templates "
            "(letkd layer kwargs) or more training data"
        )
    if backend == "auto":
        backend = "sklearn" if n * k <= SKLEARN_MAX_WORK else "torch"
    x = x.detach().float().cpu().contiguous()
    if backend == "sklearn":
        return _kmeans_sklearn(x, k, seed, iters)
    if backend == "torch":
        return _kmeans_torch(x, k, seed, iters, device)
    raise KDLabError(f"unknown k-means backend {backend!r}: sklearn, torch or auto")


def _kmeans_sklearn(x: torch.Tensor, k: int, seed: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=iters, random_state=seed)
    xs = x.numpy().astype(np.float64)
    km.fit(xs)
    centres = torch.from_numpy(km.cluster_centers_.astype(np.float32))
    # labels for the returned centres (scikit-learn already re-runs the assignment step after its last update;
    # recomputed here in float32 so both backends use one rule)
    return centres, nearest(x, centres)


def _kmeans_torch(
    x: torch.Tensor, k: int, seed: int, iters: int, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    xd = x.to(dev)
    centres = xd[torch.randperm(len(x), generator=g)[:k].to(dev)].clone()
    d = x.shape[1]
    for _ in range(max(1, iters)):
        sums = torch.zeros(k, d, dtype=torch.float64, device=dev)
        counts = torch.zeros(k, dtype=torch.long, device=dev)
        for i in range(0, len(xd), _CHUNK):
            rows = xd[i : i + _CHUNK]
            lab = sq_dists(rows, centres).argmin(1)
            sums.index_add_(0, lab, rows.double())
            counts += torch.bincount(lab, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        centres = (sums / counts.clamp_min(1)[:, None]).float()
        if len(empty):  # re-seed empty clusters with random vectors (seeded, CPU generator)
            pick = torch.randint(len(x), (len(empty),), generator=g).to(dev)
            centres[empty] = xd[pick]
    centres = centres.cpu()
    return centres, nearest(x, centres)


# ---------------------------------------------------------------------------------------------- penultimate


def target_entropy(d: torch.Tensor, tau: float) -> float:
    """Mean entropy (nats) of softmax(-tau * d) over the rows of d."""
    logp = F.log_softmax(-tau * d, dim=1)
    return float(-(logp.exp() * logp).sum(1).mean())


def calibrate_tau(d: torch.Tensor, entropy: float, lo: float = 1e-10, hi: float = 1e10, steps: int = 80) -> float:
    """tau such that the mean entropy of softmax(-tau * d) is ``entropy`` nats (bisection on log tau; the entropy
    of a Gibbs distribution never increases with tau)."""
    k = d.shape[1]
    if not 0 < entropy < math.log(k):
        raise KDLabError(f"target_entropy must lie in (0, log K = {math.log(k):.3f}), got {entropy}")
    a, b = math.log(lo), math.log(hi)
    for _ in range(steps):
        m = 0.5 * (a + b)
        if target_entropy(d, math.exp(m)) > entropy:
            a = m
        else:
            b = m
    return math.exp(0.5 * (a + b))


def fit_penult(
    feats: torch.Tensor,
    k: int,
    seed: int,
    *,
    tau: float = 1.0,
    entropy: float | None = None,
    iters: int = 20,
    backend: str = "auto",
    fit_samples: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """K-means templates on teacher location vectors ``feats`` (N, D). Returns {"centres" (k, D), "tau" (), and
    "entropy" (): the mean target entropy over (up to 20 000 of) the fitting vectors at that tau}. ``entropy``
    (nats) replaces the fixed ``tau`` by one calibrated to give that mean target entropy."""
    idx = subsample(len(feats), fit_samples, seed)
    x = feats if idx is None else feats[idx]
    centres, _ = kmeans(x, k, seed, iters=iters, backend=backend, device=device)
    probe_idx = subsample(len(x), 20_000, seed + 1)
    probe = (x if probe_idx is None else x[probe_idx]).float()
    d = sq_dists(probe, centres)
    if entropy is not None:
        tau = calibrate_tau(d, entropy)
    return {"centres": centres, "tau": torch.tensor(float(tau)), "entropy": torch.tensor(target_entropy(d, tau))}


# ---------------------------------------------------------------------------------------------- intermediate


def confusion(member: torch.Tensor, near: torch.Tensor, num: int) -> torch.Tensor:
    """Row-stochastic (num, num) matrix s[k, k'] = |{i: member_i = k, near_i = k'}| / |{i: member_i = k}|; a row
    with no members is the identity row (a sub-class nobody fell into only agrees with itself)."""
    counts = torch.zeros(num * num, dtype=torch.float64)
    counts.index_add_(0, member.long() * num + near.long(), torch.ones(len(member), dtype=torch.float64))
    counts = counts.view(num, num)
    rows = counts.sum(1, keepdim=True)
    s = torch.where(rows > 0, counts / rows.clamp_min(1), torch.eye(num, dtype=torch.float64))
    return s.float()


def fit_lda(x: torch.Tensor, y: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn LDA (SVD solver) -> (mean (D,), projection (D, n)) with ``transform(x) == (x - mean) @ W``."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    lda = LinearDiscriminantAnalysis(solver="svd", n_components=n_components)
    xs = x.double() if x.numel() <= 100_000_000 else x.float()  # float32 for CIFAR-sized fits (memory)
    lda.fit(xs.numpy(), y.numpy())
    w = torch.from_numpy(np.ascontiguousarray(lda.scalings_[:, :n_components])).float()
    if w.shape[1] < n_components:
        raise KDLabError(
            f"LDA gave only {w.shape[1]} discriminant directions (asked {n_components}): the teacher "
            "features are rank-deficient; lower lda_components"
        )
    return torch.from_numpy(lda.xbar_).float(), w


def fit_subclass(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    per_class: int,
    seed: int,
    *,
    n_components: int,
    iters: int = 20,
    backend: str = "auto",
    fit_samples: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """LDA + per-class K-means sub-classes + prototypes + the sub-class confusion matrix s_T, on teacher location
    vectors ``feats`` (N, D) labelled ``labels`` (N,) with their image's class. Returns {"lda_mean" (D,),
    "lda_w" (D, n), "centres" (C*P, n) (class-major: sub-class c*P + k), "prototypes" (C*P, n), "s_T" (C*P, C*P),
    "counts" (C*P,) members per sub-class}."""
    idx = subsample(len(feats), fit_samples, seed)
    x = (feats if idx is None else feats[idx]).float()
    y = (labels if idx is None else labels[idx]).long()
    present = torch.bincount(y, minlength=num_classes)
    if (present == 0).any():
        missing = (present == 0).nonzero().flatten().tolist()
        raise KDLabError(f"letKD sub-classes: classes {missing[:10]} have no training locations")
    mean, w = fit_lda(x, y, n_components)
    z = (x - mean) @ w
    centres = torch.zeros(num_classes * per_class, w.shape[1])
    member = torch.empty(len(z), dtype=torch.long)
    for c in range(num_classes):
        rows = (y == c).nonzero().flatten()
        cc, lab = kmeans(z[rows], per_class, seed * 1000 + c, iters=iters, backend=backend, device=device)
        centres[c * per_class : (c + 1) * per_class] = cc
        member[rows] = c * per_class + lab
    num = num_classes * per_class
    counts = torch.bincount(member, minlength=num)
    sums = torch.zeros(num, z.shape[1], dtype=torch.float64).index_add_(0, member, z.double())
    prototypes = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres.double()).float()
    near = nearest(z, prototypes)
    return {
        "lda_mean": mean,
        "lda_w": w,
        "centres": centres,
        "prototypes": prototypes,
        "s_T": confusion(member, near, num),
        "counts": counts,
    }


# ---------------------------------------------------------------------------------------------- cache


def cache_path(run_dir: Any, label: str) -> Path | None:
    return None if run_dir is None else Path(run_dir) / f"templates-{label}.safetensors"


def load_cached(path: Path | None, fingerprint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The cached tensors if ``path`` exists and was fitted with the same ``fingerprint``; else None."""
    if path is None or not path.exists():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if json.loads(meta.get("kdlab.fingerprint", "null")) != json.loads(json.dumps(fingerprint)):
            return None
        return load_file(str(path))
    except Exception:  # a torn or foreign file is refitted, never trusted
        return None


def save_cached(path: Path | None, tensors: dict[str, torch.Tensor], fingerprint: dict[str, Any]) -> None:
    if path is None:
        return

    save_weights(path, tensors, metadata={"kdlab.fingerprint": json.dumps(fingerprint, sort_keys=True)})
