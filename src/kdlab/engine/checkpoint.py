"""Checkpoints as one safetensors file, written atomically; no pickle anywhere.

Nested state (optimizer, scaler, RNG, counters) is flattened: tensors go into the safetensors payload
and everything else into a JSON skeleton in the file's metadata. A crash during a save leaves the
previous file intact, because the new one is written to a temporary file and renamed over it. Files get
the permissions the umask allows (``0666 & ~umask``, as ``open`` would), not ``mkstemp``'s private 0600.
Unreadable run files become one-line errors that name the file and say that ``--force`` restarts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdlab.errors import KDLabError

_TENSOR = "__tensor__"


def flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by references; collect them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"  # a counter, so no two paths can collide
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        items = {}
        for k, v in obj.items():
            items[str(k)] = flatten(v, tensors)
        # keep int keys (optimizer state is keyed by param index)
        return {"__dict__": items, "__intkeys__": [str(k) for k in obj if isinstance(k, int)]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten(v, tensors) for i, v in enumerate(obj)], "__tuple__": isinstance(obj, tuple)}
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return {"__float__": repr(obj)}
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            ints = set(obj.get("__intkeys__", []))
            return {(int(k) if k in ints else k): unflatten(v, tensors) for k, v in obj["__dict__"].items()}
        if "__list__" in obj:
            seq = [unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(seq) if obj.get("__tuple__") else seq
        if "__float__" in obj:
            return float(obj["__float__"])
    return obj


TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (atomic on POSIX), fsyncing the data first.

    A full disk or a read-only folder is a one-line KDLabError; the previous file is left intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise KDLabError(f"cannot write {path}: {e.strerror}; choose a writable --out (nothing was changed)") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # after: a writer may replace the file (safetensors does)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:  # ENOSPC, EROFS, EDQUOT, ...
            raise KDLabError(
                f"cannot write {path}: {e.strerror}; the previous {path.name} is intact, free "
                "space (or fix permissions) and resume with `kdlab run --resume`"
            ) from None
        raise


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete temporary files that a killed ``atomic_write`` left in ``folder`` (call with its lock held)."""
    stale = [p for p in Path(folder).glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_json(path: str | Path, fix: str = "--force restarts the run") -> Any:
    """A JSON run file, or a one-line KDLabError naming it when it is truncated or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise KDLabError(f"{path} is corrupt or truncated ({type(e).__name__}); {fix}") from None


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    meta = {"kdlab": json.dumps(skeleton)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``save_state``; a truncated or corrupt file is a one-line KDLabError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        return unflatten(json.loads(meta["kdlab"]), tensors)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; all mean "unreadable"
        raise KDLabError(
            f"{path} is corrupt or truncated ({type(e).__name__}); `kdlab run --force` restarts the run from scratch"
        ) from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from safetensors, or from a torch file read with ``weights_only=True`` (no pickled code
    runs); unreadable files (truncated, corrupt, a pickled model object) are one-line KDLabErrors."""
    p = Path(path)
    if not p.is_file():
        raise KDLabError(f"checkpoint not found: {p}" if not p.exists() else f"checkpoint {p} is not a file")
    try:
        if p.suffix == ".safetensors":
            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors/pickle raise many types; all mean "unreadable"
        kind = (
            "holds pickled objects, not plain weights"
            if "weights_only" in str(e) or "Unsupported global" in str(e)
            else "is corrupt or truncated"
        )
        raise KDLabError(
            f"checkpoint {p} {kind} ({type(e).__name__}); save a state_dict with "
            "safetensors or torch.save(model.state_dict())"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KDLabError(f"checkpoint {p} is not a state_dict of tensors; save model.state_dict()")
    return state


def fit_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model`` strictly, naming missing/unexpected keys and shape mismatches in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {shapes[:2]} (checkpoint vs model: another width or class count?)" if shapes else "",
        ]
        raise KDLabError(f"{source}: weights do not fit {type(model).__name__}: " + "; ".join(x for x in parts if x))
    model.load_state_dict(state)


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Plain weights (a state_dict) as safetensors, atomically; shared storage is cloned apart."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {}))


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype("int64")),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
