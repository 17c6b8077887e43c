"""One generic registry for terms (methods), models, datasets and views.

Names are looked up, never dispatched with if/elif; a misspelt name raises a KDLabError that suggests
the nearest registered names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kdlab.errors import unknown_name

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str = ""
    paper: str = ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, description: str = "", paper: str = "") -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet20", description=..., paper=...)``."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            desc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, desc, paper)
            return obj

        return deco

    def add(self, name: str, obj: T, *, description: str = "", paper: str = "") -> T:
        return self.register(name, description=description, paper=paper)(obj)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        load_builtins()
        return [self._entries[n] for n in sorted(self._entries)]


TERMS: Registry[Any] = Registry("method")
MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")
VIEWS: Registry[Any] = Registry("view")
LAYERS: Registry[Any] = Registry("layer")  # layers inserted into a student and kept at inference (letKD)

# Modules whose import registers the built-in entries. Imported lazily so `import kdlab.registry` is cheap
# and so that a module can register itself without an import cycle.
BUILTIN_MODULES = ("kdlab.methods", "kdlab.models", "kdlab.data", "kdlab.views", "kdlab.layers")
_loaded = False


def load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
