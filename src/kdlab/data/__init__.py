"""Datasets: built-in offline sets, real loaders, batch loaders and corruptions."""

from __future__ import annotations

import inspect
from typing import Any

from kdlab.data import (  # noqa: F401  (register the datasets)
    arrays,  # noqa: F401  (registers arrays: a user's own files)
    builtin,
    cifar,
    folder,
    text,  # noqa: F401  (registers tweets, glue)
)
from kdlab.data.base import Dataset, Split
from kdlab.data.loader import StreamLoader, StreamSplit, TensorLoader, make_loader
from kdlab.errors import KDLabError
from kdlab.registry import DATASETS


def build_dataset(name: str, /, **kwargs: Any) -> Dataset:
    """``DATASETS.get(name)(**kwargs)``; unknown or missing keyword arguments become a one-line KDLabError."""
    fn = DATASETS.get(name)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # not introspectable: let the call decide
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            accepted = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            raise KDLabError(f"dataset {name!r}: {e}; accepted kwargs: {', '.join(accepted) or '(none)'}") from None
    return fn(**kwargs)


__all__ = ["Dataset", "Split", "StreamLoader", "StreamSplit", "TensorLoader", "build_dataset", "make_loader"]
