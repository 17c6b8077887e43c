"""Checkpoints as one safetensors file, written atomically; no pickle anywhere.

Nested state (optimizer, scaler, RNG, counters) is flattened: tensors go into the safetensors payload
and everything else into a JSON skeleton in the file's metadata. A crash during a save leaves the
previous file intact, because the new one is written to a temporary file and renamed over it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

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
        return {"__list__": [flatten(v, tensors) for i, v in enumerate(obj)],
                "__tuple__": isinstance(obj, tuple)}
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


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (atomic on POSIX), fsyncing the data first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    meta = {"kdlab": json.dumps(skeleton)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    return unflatten(json.loads(meta["kdlab"]), tensors)


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
        "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
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
