"""The augmentation-consistent soft-label cache: a frozen teacher's outputs over the training split, keyed by
(sample index, augmentation view), built once and read by every student, method and seed.

Folder layout (everything written atomically; ``meta.json`` last, so a folder without it is an unfinished
build that the next ``build`` resumes shard by shard)::

    meta.json                 fingerprint, shapes, storage, view mode
    views.npy                 enumerated mode: the V×k parameter rows (row v = view number v)
    params.npy                sampled mode: N×K×k parameter rows drawn once per sample
    logits-00000.npy          S×V×C fp16/fp32 logits of samples [0, S), S = meta["shard"]
    topv-/topi-/rest-00000.npy  top-k storage: log-probabilities and class ids of the k largest, log of the rest mass
    feat-<tap>-00000.npy      optional features at declared taps, S×V×...
    eval-test.npy, eval-val.npy  un-augmented held-out logits (float32), so a cache-only teacher also serves
                              evaluation metrics (agreement, KL(T‖S))

Exactness. In *enumerated* mode (crop/flip: every parameter row listed) the loader draws augmentation
parameters exactly as a live run does and looks up the row's logits, so a cached run trains on the same
images with the same teacher outputs. In *sampled* mode the cache stores K parameter rows per sample and the
loader picks one of them per step. With ``dtype: fp32`` the stored logits are the teacher's own; whether a
cached run then equals a live run bitwise depends only on whether the teacher's forward gives a sample the same
numbers in a batch of ``data.eval_batch_size`` (build) as in a training batch (docs/decisions.md).

Top-k storage (many classes): the k largest log-probabilities and the log of the remaining mass; the logits
are rebuilt with the remaining mass spread evenly over the other classes, so softmax at τ = 1 is exact on the
top k; at τ ≠ 1 it is an approximation (FKD's region labels make the same trade).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.engine.checkpoint import atomic_write
from kdlab.engine.progress import TaskBar
from kdlab.errors import KDLabError
from kdlab.teachers.base import FEATURES, LOGITS, TeacherOutput

VERSION = 1
META = "meta.json"
DTYPES = {"fp16": np.float16, "fp32": np.float32}


# --------------------------------------------------------------------------------------------- fingerprints


def _digest(parts: list[bytes | str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return _digest([str(tuple(t.shape)), str(t.dtype), t.numpy().tobytes()])


def weights_digest(model: torch.nn.Module) -> str:
    """The teacher's weights and buffers (BatchNorm statistics included), independent of device."""
    parts: list[bytes | str] = []
    for k, v in sorted(model.state_dict().items()):
        parts += [k, tensor_digest(v)]
    return _digest(parts)


def split_digest(split: Any) -> str:
    """Inputs of a split (in memory: their bytes; streamed: labels, size and shape)."""
    x = split.x
    if isinstance(x, torch.Tensor):
        return tensor_digest(x)
    return _digest(["stream", str(tuple(x.shape)), tensor_digest(split.y)])


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def fingerprint(*, teacher: str | None, dataset: Any, augment: list[dict], spec: Any, autocast: str) -> dict[str, str]:
    """What the stored outputs depend on, one entry per cause so a refusal can say what changed."""
    val = getattr(dataset, "val", None)
    return {
        "teacher weights": teacher or "unknown",
        "training inputs": split_digest(dataset.train),
        "held-out inputs": _digest([split_digest(dataset.test)] + ([split_digest(val)] if val is not None else [])),
        "augmentation": _digest([_json(augment)]),
        "normalisation": _digest([_json([list(dataset.mean), list(dataset.std)])]),
        "storage": _digest(
            [
                _json(
                    {
                        "views": spec.views,
                        "dtype": spec.dtype,
                        "topk": spec.topk,
                        "taps": list(spec.taps),
                        "seed": spec.seed,
                    }
                )
            ]
        ),
        "teacher precision": autocast,
    }


def short(fp: dict[str, str]) -> str:
    """A folder name for ``cache: auto``: every cause but the teacher's weights (the folder sits in the run)."""
    return _digest([_json({k: v for k, v in fp.items() if k != "teacher weights"})])[:16]


def check_fingerprint(path: Path, stored: dict[str, str], expected: dict[str, str]) -> None:
    changed = [k for k, v in expected.items() if v != "unknown" and stored.get(k) not in (v, "unknown")]
    if changed:
        raise KDLabError(
            f"teacher cache {path} is stale or foreign: {', '.join(changed)} changed since it was "
            "built; rebuild it with `kdlab cache build` (same recipe) or use `teacher.cache: auto`"
        )


# --------------------------------------------------------------------------------------------- the store


def _tap_file(tap: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tap)


def shard_files(path: Path, kind: str, shards: int) -> list[Path]:
    return [path / f"{kind}-{s:05d}.npy" for s in range(shards)]


def read_meta(path: str | Path) -> dict[str, Any] | None:
    p = Path(path) / META
    if not p.exists():
        return None
    try:
        meta = json.loads(p.read_text())
    except ValueError:
        raise KDLabError(f"{p} is corrupt; delete {Path(path)} and rebuild with `kdlab cache build`") from None
    if meta.get("version") != VERSION:
        raise KDLabError(
            f"teacher cache {path} has format {meta.get('version')}, this kdlab reads {VERSION}; rebuild it"
        )
    return meta


class _Array:
    """One stored quantity over all samples, sharded by sample: gathered per (idx, view) as a torch tensor,
    either from one resident tensor (memory or GPU) or from memory-mapped shards."""

    def __init__(self, files: list[Path], shard: int, placement: str, device: torch.device):
        self.shard = shard
        maps = [np.load(f, mmap_mode="r") for f in files]
        self.resident: torch.Tensor | None = None
        self.maps = maps
        if placement in ("memory", "device"):
            t = torch.from_numpy(np.concatenate([np.asarray(m) for m in maps]))
            self.resident = t.to(device) if placement == "device" else t

    def gather(self, idx: torch.Tensor, view: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.resident is not None:
            r = self.resident
            return r[idx.to(r.device), view.to(r.device)].to(device, non_blocking=True)
        i, v = idx.cpu().numpy(), view.cpu().numpy()
        s, o = i // self.shard, i % self.shard
        first = self.maps[0]
        out = np.empty((len(i),) + first.shape[2:], dtype=first.dtype)
        for k in np.unique(s):
            m = s == k
            out[m] = self.maps[k][o[m], v[m]]
        return torch.from_numpy(out).to(device)


def _nbytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


class CachedTeacher:
    """A teacher served from a cache folder; ``live`` (optional) runs the same teacher on new inputs."""

    def __init__(
        self,
        path: str | Path,
        *,
        live: Any = None,
        placement: str = "auto",
        device: torch.device | str = "cpu",
        name: str = "teacher",
        expected: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        meta = read_meta(self.path)
        if meta is None or not meta.get("complete"):
            raise KDLabError(
                f"{self.path} is not a finished teacher cache (no meta.json); build it with "
                "`kdlab cache build <recipe files>`"
            )
        if expected is not None:
            check_fingerprint(self.path, meta["fingerprint"], expected)
        self.meta, self.name, self._live = meta, name, live
        self.device = torch.device(device)
        n, shard = meta["num_samples"], meta["shard"]
        shards = math.ceil(n / shard)
        kinds = ["topv", "topi", "rest"] if meta["topk"] else ["logits"]
        kinds += [f"feat-{_tap_file(t)}" for t in meta["taps"]]
        files = {k: shard_files(self.path, k, shards) for k in kinds}
        total = sum(_nbytes(f) for f in files.values())
        self.placement = _place(placement, total, self.device)
        self.arrays = {k: _Array(f, shard, self.placement, self.device) for k, f in files.items()}
        self.taps = list(meta["taps"])
        self.capabilities = frozenset(
            {LOGITS} | ({FEATURES} if self.taps else set()) | (live.capabilities if live is not None else set())
        )
        self.table: torch.Tensor | None = None
        if meta["mode"] == "sampled":
            self.table = torch.from_numpy(np.load(self.path / "params.npy").astype(np.int64))
        self.samples_seen = 0  # live passes only (a cache lookup costs no teacher pass)

    # ---------------------------------------------------------------------------------------- TeacherSource
    @property
    def live(self) -> Any:
        return self._live

    @property
    def mode(self) -> str:
        return self.meta["mode"]

    def missing_taps(self, taps: list[str]) -> list[str]:
        return [t for t in taps if t not in self.taps]

    def logits(self, idx: torch.Tensor, view: torch.Tensor, device: torch.device) -> torch.Tensor:
        if not self.meta["topk"]:
            return self.arrays["logits"].gather(idx, view, device).float()
        vals = self.arrays["topv"].gather(idx, view, device).float()
        ids = self.arrays["topi"].gather(idx, view, device).long()
        rest = self.arrays["rest"].gather(idx, view, device).float()
        c, k = self.meta["num_classes"], vals.shape[-1]
        fill = rest - math.log(max(1, c - k))  # the rest mass spread evenly over the other classes
        out = fill[:, None].expand(len(vals), c).clone()
        return out.scatter_(1, ids, vals)

    def clean(self, batch: Any) -> TeacherOutput:
        if batch.view is None:
            raise KDLabError(
                "the teacher cache needs view numbers on the batch; build the batch with the run's "
                "Pipeline (kdlab.engine.batch)"
            )
        dev = batch.x.device
        feats = {t: self.arrays[f"feat-{_tap_file(t)}"].gather(batch.idx, batch.view, dev).float() for t in self.taps}
        return TeacherOutput(self.logits(batch.idx, batch.view, dev), feats)

    def eval_logits(self, split: str, loader: Any, prepare: Any) -> torch.Tensor:
        f = self.path / f"eval-{split}.npy"
        if f.exists():
            return torch.from_numpy(np.load(f)).float()
        if self._live is not None:
            return self._live.eval_logits(split, loader, prepare)
        raise KDLabError(
            f"teacher cache {self.path} has no {split} logits and the teacher has no live model; "
            "rebuild the cache with this recipe"
        )

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"CachedTeacher({self.path}, {m['num_samples']}×{m['num_views']} views, {m['mode']}, "
            f"{m['dtype']}{', top-' + str(m['topk']) if m['topk'] else ''}, {self.placement})"
        )


def _place(placement: str, nbytes: int, device: torch.device) -> str:
    """``auto``: on the GPU when the cache takes under a quarter of its free memory, else in host memory when
    under a quarter of the available RAM, else memory-mapped."""
    if placement != "auto":
        if placement == "device" and device.type == "cpu":
            return "memory"
        return placement
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < free / 4:
            return "device"
    try:
        import os

        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return "memory" if nbytes < avail / 4 else "mmap"


# --------------------------------------------------------------------------------------------- building


def cache_size(
    num_samples: int, num_views: int, num_classes: int, spec: Any, feat_shapes: dict[str, tuple]
) -> dict[str, int]:
    per = 2 if spec.dtype == "fp16" else 4
    if spec.topk:
        logits = num_samples * num_views * (spec.topk * (per + 4) + 4)
    else:
        logits = num_samples * num_views * num_classes * per
    feats = {t: num_samples * num_views * int(np.prod(s)) * per for t, s in feat_shapes.items()}
    return {"logits": logits, **{f"features {t}": b for t, b in feats.items()}}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


@torch.no_grad()
def build(
    path: str | Path,
    *,
    teacher: Any,
    dataset: Any,
    pipeline: Any,
    spec: Any,
    fp: dict[str, str],
    augment: list[dict],
    batch_size: int,
    device: torch.device,
    show: Any = print,
    progress: bool | None = None,
) -> Path:
    """Run ``teacher`` (a LiveTeacher) over every (sample, view) of the training split and write the cache.
    Resumable: finished shards are kept. Returns the folder."""
    from kdlab.data import make_loader  # deferred: kdlab.data imports every dataset

    path = Path(path)
    meta = read_meta(path)
    if meta is not None and meta.get("complete"):
        check_fingerprint(path, meta["fingerprint"], fp)
        return path
    path.mkdir(parents=True, exist_ok=True)
    n, c = len(dataset.train), dataset.num_classes
    taps = list(spec.taps)
    teacher.add_taps(taps)
    # the views: every parameter row (enumerated), K rows per sample drawn once (sampled), or none (identity)
    if not pipeline.augment:
        mode, rows, table, v = "identity", torch.zeros(1, 0, dtype=torch.int64), None, 1
    elif spec.views == "all":
        if not pipeline.enumerable:
            raise KDLabError(
                "teacher.cache.views: the augmentation "
                f"{[a['name'] for a in augment]} cannot be enumerated; set views: K (a number of "
                "views per sample drawn once)"
            )
        mode, rows, table, v = "enumerated", pipeline.enumerate(), None, pipeline.num_views
    else:
        k = int(spec.views)
        gen = torch.Generator().manual_seed(spec.seed)
        probe = _raw(dataset.train.x[:1])
        table = torch.stack(
            [
                torch.cat([pv.draw(probe.expand(n, *probe.shape[1:]), gen) for pv in pipeline.augment], 1)
                for _ in range(k)
            ],
            1,
        )  # N×K×k
        mode, rows, v = "sampled", None, k
        _save_npy(path / "params.npy", table.numpy().astype(np.int16))
    if rows is not None:
        _save_npy(path / "views.npy", rows.numpy().astype(np.int16))
    probe_out = teacher(pipeline.prepare(_raw(dataset.train.x[:2]).to(device)))
    feat_shapes = {t: tuple(probe_out.feats[t].shape[1:]) for t in taps}
    sizes = cache_size(n, v, c, spec, feat_shapes)
    show(
        f"teacher cache {path}: {n} samples × {v} views ({mode}) × {c} classes, {spec.dtype}"
        f"{f', top-{spec.topk}' if spec.topk else ''}: "
        + ", ".join(f"{k} {human(b)}" for k, b in sizes.items())
        + f" = {human(sum(sizes.values()))}"
    )
    dtype = DTYPES[spec.dtype]
    shard = int(spec.shard)
    shards = math.ceil(n / shard)
    kinds = ["topv", "topi", "rest"] if spec.topk else ["logits"]
    kinds += [f"feat-{_tap_file(t)}" for t in taps]
    todo = [s for s in range(shards) if not all((path / f"{k}-{s:05d}.npy").exists() for k in kinds)]
    views_todo = sum(min(n, (s + 1) * shard) - s * shard for s in todo) * v
    bar = TaskBar(f"teacher cache ({mode}, {v} views)", views_todo, setting=progress, lines=show, unit="views")
    try:
        for s in todo:
            lo, hi = s * shard, min(n, (s + 1) * shard)
            out: dict[str, np.ndarray] = {}
            split = dataset.train.subset(torch.arange(lo, hi))
            loader = make_loader(split, batch_size=batch_size, shuffle=False, device=device)
            for x, _, local in loader.iter_epoch(0):
                x = x.to(device)
                for j in range(v):
                    if mode == "sampled":
                        xr = pipeline.at(x, table[local + lo, j].to(device))
                    else:
                        xr = pipeline.at(x, rows[j].to(device))
                    res = teacher(xr)
                    _store(out, res, local.cpu().numpy(), j, hi - lo, v, c, spec, dtype, taps)
                    bar.advance(len(x))
            for k, arr in out.items():
                _save_npy(path / f"{k}-{s:05d}.npy", arr)
        for name in ("test", "val"):
            split = getattr(dataset, name, None)
            if split is None:
                continue
            loader = make_loader(split, batch_size=batch_size, shuffle=False, device=device)
            ev = torch.cat([teacher(pipeline.prepare(x.to(device))).logits.cpu() for x, _, _ in loader.iter_epoch(0)])
            _save_npy(path / f"eval-{name}.npy", ev.numpy().astype(np.float32))
    finally:
        bar.stop()
    meta = {
        "version": VERSION,
        "complete": True,
        "fingerprint": fp,
        "mode": mode,
        "num_samples": n,
        "num_views": v,
        "num_classes": c,
        "dtype": spec.dtype,
        "topk": spec.topk,
        "taps": taps,
        "feature_shapes": {t: list(s) for t, s in feat_shapes.items()},
        "shard": shard,
        "augment": augment,
        "bytes": sum(sizes.values()),
    }
    atomic_write(path / META, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path


def _raw(x: torch.Tensor) -> torch.Tensor:
    """A slice of a split as the loader yields it: floating inputs as float32, token ids unchanged."""
    return x.float() if x.is_floating_point() else x


def _store(
    out: dict[str, np.ndarray],
    res: TeacherOutput,
    local: np.ndarray,
    j: int,
    size: int,
    v: int,
    c: int,
    spec: Any,
    dtype: Any,
    taps: list[str],
) -> None:
    def put(key: str, value: torch.Tensor, dt: Any) -> None:
        if key not in out:
            out[key] = np.zeros((size, v) + tuple(value.shape[1:]), dtype=dt)
        out[key][local, j] = value.cpu().numpy().astype(dt)

    logits = res.logits.float()
    if spec.topk:
        logp = torch.log_softmax(logits, 1)
        top = logp.topk(min(spec.topk, c), 1)
        rest = torch.log1p(-top.values.exp().sum(1).clamp(max=1 - 1e-7))  # log of the mass outside the top k
        put("topv", top.values, dtype)
        put("topi", top.indices, np.int32)
        put("rest", rest, np.float32)
    else:
        put("logits", logits, dtype)
    for t in taps:
        put(f"feat-{_tap_file(t)}", res.feats[t].float(), dtype)
