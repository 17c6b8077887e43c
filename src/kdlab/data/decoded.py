"""A cache of decoded images: uint8 ``.npy`` arrays in a folder keyed by what they were decoded from.

Decoding 60,000 JPEGs takes seconds to minutes; loading their decoded uint8 copy (memory-mapped ``.npy``)
takes well under a second. Each entry is ``<cache root>/images/<key>/`` with ``train_x.npy`` (N×C×H×W uint8),
``train_y.npy`` (int64), the same for ``test``, and ``meta.json`` (classes, per-channel mean/std, source).
An entry is written to a temporary folder and renamed, so a crash never leaves a half-written entry that
looks complete. The key is a sha256 over the sources' fingerprints (sha256 of archive files, or paths + sizes
+ mtimes of plain folders) and every decoding option, so any change to either decodes again.

The cache root is ``$KDLAB_CACHE`` or ``~/.cache/kdlab``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.errors import KDLabError

FORMAT = 1  # bump when the stored layout or decoding changes, so old entries are not reused


def cache_root() -> Path:
    """``$KDLAB_CACHE`` or ``~/.cache/kdlab``."""
    env = os.environ.get("KDLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdlab"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in ``memo_dir/sha256.json`` (hashing GBs is slow)."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = (memo_dir or cache_root()) / "sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    memo[stamp] = h.hexdigest()
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f".sha256.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return memo[stamp]


def folder_fingerprint(folders: list[Path]) -> str:
    """Cheap fingerprint of plain folders: every file's relative path, size and mtime (no reading)."""
    rows = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                st = p.stat()
                rows.append((str(p.relative_to(folder.parent)), st.st_size, st.st_mtime_ns))
    return _digest(rows)


def entry_key(sources: list[str], options: dict[str, Any]) -> str:
    """The cache key of one decoded dataset: its sources' fingerprints and the decoding options."""
    return _digest({"format": FORMAT, "sources": sources, "options": options})[:32]


def entry_dir(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "images" / key


def load_entry(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays (memory-mapped) and meta of a complete entry, or None when there is none."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r") for n in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, ValueError) as e:
        raise KDLabError(
            f"decoded-image cache entry {path} is damaged ({e}); delete that folder to decode again"
        ) from None
    return arrays, meta


def save_entry(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write an entry atomically (temporary folder, then rename); a read-only cache is skipped silently."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError:
        return
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, path)
        except OSError:  # another process wrote the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def uint8_channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 N×C×H×W images in [0, 1] scale, from exact integer sums
    (no float copy of the whole set)."""
    n, c = x.shape[0], x.shape[1]
    count = n * int(np.prod(x.shape[2:]))
    mean, std = [], []
    for ch in range(c):
        s = s2 = 0
        for start in range(0, n, 4096):
            block = np.asarray(x[start : start + 4096, ch], dtype=np.int64)
            s += int(block.sum())
            s2 += int((block * block).sum())
        m = s / count
        var = (s2 - s * s / count) / max(count - 1, 1)
        mean.append(m / 255.0)
        std.append(max(var, 0.0) ** 0.5 / 255.0)
    return tuple(mean), tuple(std)


__all__ = [
    "cache_root",
    "entry_dir",
    "entry_key",
    "file_sha256",
    "folder_fingerprint",
    "load_entry",
    "save_entry",
    "uint8_channel_stats",
]
