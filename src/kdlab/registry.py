"""One generic registry for terms (methods), models, datasets, views and layers.

Names are looked up, never dispatched with if/elif; a misspelt name raises a KDLabError that suggests
the nearest registered names. Every registry also accepts ``package.module:name``: the module is imported
and ``name`` is either an entry that the module registered on import, or an attribute of the module (dotted,
``module:Class.create``). So a user's own dataset, method, view or layer is named in a recipe without any
registration code, exactly as a model factory is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kdlab.errors import KDLabError, nearest, unknown_name

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
        self._imported: dict[str, Entry[T]] = {}  # "module:name" look-ups, kept out of listings

    def register(self, name: str, *, description: str = "", paper: str = "") -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet20", description=..., paper=...)``."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            desc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, desc, paper)
            return obj

        return deco

    def add(self, name: str, obj: T, *, description: str = "", paper: str = "", replace: bool = False) -> T:
        """Register ``obj``; ``replace`` rebinds an existing name (objects made in memory, e.g. kdlab.distill)."""
        if replace:
            self._entries.pop(name, None)
        return self.register(name, description=description, paper=paper)(obj)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        load_builtins()
        if name in self._entries:
            return self._entries[name]
        if isinstance(name, str) and ":" in name:
            if name not in self._imported:
                self._imported[name] = self._import(name)
            return self._imported[name]
        if isinstance(name, str) and name.startswith("inmemory."):
            raise KDLabError(
                f"{self.kind} {name!r} was given to kdlab.distill in another Python process; such runs "
                "resume from Python (call kdlab.distill again with the same arguments), not from a recipe"
            )
        raise unknown_name(self.kind, name, self._entries)

    def _import(self, spec: str) -> Entry[T]:
        """``package.module:name``: an entry the module registered on import, else the module's attribute."""
        attr = spec.partition(":")[2]
        obj = import_object(spec, self.kind)
        if attr in self._entries and self._entries[attr].obj is obj:
            return self._entries[attr]
        desc = (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
        return Entry(spec, obj, desc)

    def __contains__(self, name: object) -> bool:
        """Registered names, and ``module:name`` specs that import (a failing import is False here; ``entry``
        says why)."""
        try:
            self.entry(name)  # type: ignore[arg-type]
        except KDLabError:
            return False
        return True

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


def import_object(spec: str, kind: str = "object") -> Any:
    """``"package.module:attr"`` (attr may be dotted) -> the object; one-line KDLabError when it fails.

    A module that registers entries on import (``@DATASETS.register("mine")``) is found by its registered name
    too (``mypkg.extras:mine``), see ``Registry.entry``.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise KDLabError(f"{kind} {spec!r} must look like 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise KDLabError(
            f"{kind} {spec!r}: cannot import module {module_name!r} ({e}); is it installed or in the current directory?"
        ) from None
    module = obj
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            registry = {r.kind: r for r in (TERMS, MODELS, DATASETS, VIEWS, LAYERS)}.get(kind)
            if registry is not None and attr_path in registry._entries:  # registered by the import
                return registry._entries[attr_path].obj
            near = nearest(attr_path, [n for n in dir(module) if not n.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise KDLabError(f"{kind} {spec!r}: module {module_name!r} has no attribute {attr_path!r}{hint}") from None
    return obj


def import_plugins(modules: Any, where: str = "plugins") -> None:
    """Import each module of a recipe's ``plugins:`` list, so that what they register can be named."""
    if modules is None:
        return
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) for m in modules):
        raise KDLabError(f"{where}: expected a list of module names, e.g. [mypkg.kd_extras]; got {modules!r}")
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise KDLabError(
                f"{where}: cannot import {m!r} ({e}); install it or run from the folder that holds "
                "it (the current directory is importable)"
            ) from None


def options(obj: Any) -> list[str]:
    """``name=default`` for each option of an entry: its ``Params`` model's fields, else the factory's keyword
    parameters (what ``kdlab list`` shows; ``name`` alone when required)."""
    import inspect

    params = getattr(obj, "Params", None)
    if params is not None and hasattr(params, "model_fields"):
        return [
            n if f.is_required() else f"{n}={f.get_default(call_default_factory=True)!r}"
            for n, f in params.model_fields.items()
        ]
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [
        p.name if p.default is p.empty else f"{p.name}={p.default!r}"
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


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
