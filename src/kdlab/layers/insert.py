"""Insert registered layers after modules of a built student, at module paths or ``@aliases``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kdlab.capture import probe_shapes, resolve_alias, resolve_module, split_tap
from kdlab.errors import KDLabError
from kdlab.registry import LAYERS


class Inserted(nn.Module):
    """``layer(inner(x))``: the original module (``inner``) followed by the inserted ``layer``. Taps:
    ``<path>`` gives the output after the layer, ``<path>.inner`` the original output."""

    def __init__(self, inner: nn.Module, layer: nn.Module):
        super().__init__()
        self.inner = inner
        self.layer = layer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer(self.inner(*args, **kwargs))


def insert_layers(
    model: nn.Module, specs: Sequence[Any], *, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """Insert ``specs`` (InsertSpec: at, layer, kwargs) in order; channel counts come from a probe."""
    for spec in specs:
        path, want_input = split_tap(resolve_alias(model, spec.at))
        if want_input:
            raise KDLabError(f"insert.at {spec.at!r}: layers go after a module's output, not its input (':in')")
        resolve_module(model, path)  # a clear error for a wrong path
        shape = probe_shapes(model, [path], input_shape)[path]
        layer = LAYERS.get(spec.layer)(channels=int(shape[0]), num_classes=num_classes, **spec.kwargs)
        parent_path, _, leaf = path.rpartition(".")
        parent = resolve_module(model, parent_path) if parent_path else model
        setattr(parent, leaf, Inserted(getattr(parent, leaf), layer))
    return model
