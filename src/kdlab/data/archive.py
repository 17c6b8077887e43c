"""Image folders kept as ``.tar`` / ``.tar.gz`` / ``.tgz`` archives of class folders, read without unpacking.

A member ``[prefix/]<split>/<class>/<file>`` with ``split`` in train / val / test and an image extension is an
image of that class; everything else (folders, READMEs, other files) is ignored. Several archives are merged
(e.g. one per split, as ``cifar10-jpeg-train.tar.gz`` and ``cifar10-jpeg-test.tar.gz``). Each archive is read
once, sequentially (gzip allows nothing else), into memory as encoded bytes; decoding happens elsewhere.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

from kdlab.errors import KDLabError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLITS = ("train", "val", "test")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def find_archives(root: Path) -> list[Path]:
    """``[root]`` when root is an archive, else the archives directly inside the folder ``root`` (sorted)."""
    if is_archive(root):
        return [root]
    if root.is_dir():
        return sorted(p for p in root.iterdir() if is_archive(p))
    return []


def read_archives(archives: list[Path], extensions: tuple[str, ...]) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """``{split: {class: [(member name, encoded bytes), ...]}}`` over all archives, files sorted by name."""
    out: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for path in archives:
        try:
            with tarfile.open(path, "r|*") as tar:  # one sequential pass: no seeking in gzip
                for member in tar:
                    if not member.isfile():
                        continue
                    parts = member.name.replace("\\", "/").split("/")
                    if len(parts) < 3 or parts[-3] not in SPLITS or not parts[-1].lower().endswith(extensions):
                        continue
                    if parts[-1].startswith(".") or parts[-2].startswith("."):
                        continue
                    fh = tar.extractfile(member)
                    if fh is None:
                        continue
                    out.setdefault(parts[-3], {}).setdefault(parts[-2], []).append((member.name, fh.read()))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise KDLabError(f"cannot read the archive {path}: {e} (is it a complete .tar/.tar.gz file?)") from None
    for classes in out.values():
        for files in classes.values():
            files.sort(key=lambda item: item[0])
    return out


__all__ = ["ARCHIVE_SUFFIXES", "find_archives", "is_archive", "read_archives"]
