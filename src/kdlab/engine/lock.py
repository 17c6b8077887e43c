"""Exclusive locks on run folders (and so on shared teachers), so two processes never train one folder.

The lock is ``fcntl.flock`` on a small file *beside* the folder (``runs/kd/.seed0.lock`` for
``runs/kd/seed0``), so wiping the folder (``--force``, a changed recipe) never deletes a held lock. The
kernel releases a flock when its holder dies, so a lock file left by a killed run is stale by construction
and is simply taken over; the file holds the holder's pid, host and start time only to name it in errors.
Where ``flock`` is not supported (some network file systems), an exclusive-create lock file is used
instead, and a lock whose pid is dead on this host is detected as stale and removed.

Locks are re-entrant within a process: a student run that trains its teacher on demand takes the
teacher folder's lock, and the teacher's own ``run_recipe`` takes it again without blocking itself.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdlab.errors import KDLabError

_HELD: dict[str, tuple[int, int | None]] = {}  # lock path -> (depth, fd or None for the create-file fallback)
POLL_S = 0.2


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


def holder(folder: str | Path) -> dict | None:
    """What the lock file says about its holder (``pid``, ``host``, ``since``), or None."""
    for path in (lock_path(folder), lock_path(folder).with_suffix(".lockfile")):
        try:
            info = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            return info
    return None


def describe(info: dict | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (since {since})"


def _me() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_flock(path: Path) -> int | None:
    """An fd holding the flock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, _me().encode())
    return fd


def _try_create(path: Path) -> bool:
    """Fallback without flock: exclusive creation; a lock of a dead pid on this host is removed first."""
    info = None
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        pass
    if isinstance(info, dict) and info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", 0))):
        path.unlink(missing_ok=True)  # stale: its holder died without releasing it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    os.write(fd, _me().encode())
    os.close(fd)
    return True


def _acquire_once(path: Path) -> tuple[bool, int | None]:
    try:
        fd = _try_flock(path)
        return fd is not None, fd
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    return _try_create(path.with_suffix(".lockfile")), None


@contextmanager
def folder_lock(
    folder: str | Path,
    *,
    wait: bool = False,
    what: str = "run folder",
    hint: str = "wait for it to finish, or pass --wait to queue behind it",
) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` for the ``with`` block.

    ``wait=False`` raises a one-line KDLabError naming the holder when the folder is locked; ``wait=True``
    blocks until the holder is done (the caller then usually finds the run finished and reuses it).
    """
    path = lock_path(folder)
    key = str(path)
    if key in _HELD:  # re-entrant within this process
        depth, fd = _HELD[key]
        _HELD[key] = (depth + 1, fd)
        try:
            yield
        finally:
            _release(key)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            ok, fd = _acquire_once(path)
            if ok:
                break
            if not wait:
                raise KDLabError(f"{what} {folder} is in use by {describe(holder(folder))}; {hint}")
            if not waited:  # say once why nothing happens
                print(f"kdlab: waiting for {what} {folder} (in use by {describe(holder(folder))})", file=sys.stderr)
                waited = True
            time.sleep(POLL_S)
    except OSError as e:  # read-only or foreign folder
        raise KDLabError(
            f"{what} {folder}: cannot create its lock file {path} ({e.strerror}); choose a writable --out"
        ) from None
    _HELD[key] = (1, fd)
    try:
        yield
    finally:
        _release(key)


def _release(key: str) -> None:
    depth, fd = _HELD[key]
    if depth > 1:
        _HELD[key] = (depth - 1, fd)
        return
    del _HELD[key]
    if fd is not None:
        os.close(fd)  # releases the flock; the file stays (removing it would race with a waiting process)
    else:
        Path(key).with_suffix(".lockfile").unlink(missing_ok=True)


def is_held(folder: str | Path) -> bool:
    """True when this process holds ``folder``'s lock."""
    return str(lock_path(folder)) in _HELD
