"""``build_model``: one entry point for registry names, timm / torchvision models and Python factories.

Name forms:

- ``"resnet20"``: a name in ``kdlab.registry.MODELS``; a misspelt name raises the registry's
  "did you mean ..." error.
- ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=C, **kwargs)``.
- ``"torchvision:NAME"``: ``torchvision.models.get_model(NAME, weights=None, num_classes=..., **kwargs)``;
  when the input has C != 3 channels, the first 3-channel ``Conv2d`` is replaced by a freshly initialised
  C-channel one (torchvision has no ``in_chans``).
- ``"package.module:function"`` (the attribute may be dotted, ``module:Class.create``): a Python factory.
  Calling convention: ``num_classes`` and ``input_shape`` are passed *only if the factory's signature
  accepts them* (as named parameters or through ``**kwargs``); the extra keyword arguments are always
  passed. So ``def make(num_classes, input_shape, **kw)``, ``def make(num_classes)`` and
  ``def make(depth=2)`` all work; a factory that does not take ``num_classes`` must produce the right
  number of outputs itself. The factory must return an ``nn.Module``.

timm models get portable tap aliases from their ``feature_info``: ``@stageK`` is timm's ``out_indices`` K (so
``@stage0`` is the stem where timm lists one), ``@last`` the deepest, ``@penultimate`` the classifier's input;
so the method recipes work on them.

kdlab never downloads weights: ``pretrained=True`` / ``weights=...`` are refused for the adapters (load a
checkpoint instead). timm and torchvision are imported lazily and are optional (``kdlab[vision]``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from kdlab.errors import KDLabError
from kdlab.registry import MODELS, import_object

__all__ = ["build_model"]

_VISION_HINT = "pip install 'kdlab[vision]'"


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """Build a model by registry name, ``timm:NAME``, ``torchvision:NAME`` or ``package.module:function``."""
    if not isinstance(name, str) or not name.strip():
        raise KDLabError(f"model name must be a non-empty string; got {name!r}")
    name = name.strip()
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_shape(input_shape)
    prefix, sep, rest = name.partition(":")
    if sep and prefix == "timm":
        model = _build_timm(rest, num_classes, input_shape, kwargs)
    elif sep and prefix == "torchvision":
        model = _build_torchvision(rest, num_classes, input_shape, kwargs)
    elif sep:
        from kdlab.models.hf import adapt_model  # a transformers model takes ids and returns logits like ours

        model = adapt_model(_build_factory(name, num_classes, input_shape, kwargs), num_classes)
    else:
        model = MODELS.get(name)(num_classes=num_classes, input_shape=input_shape, **kwargs)
    if not isinstance(model, nn.Module):
        raise KDLabError(f"model {name!r}: the builder returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise KDLabError(f"num_classes must be a positive integer; got {num_classes!r}")
    return num_classes


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise KDLabError(f"input_shape must be a tuple of positive integers; got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise KDLabError(f"input_shape must be a non-empty tuple of positive integers; got {input_shape!r}")
    return shape


def _import_optional(module: str, model: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise KDLabError(
            f"model {model!r} needs the optional package {module!r}, which is not installed: {_VISION_HINT}"
        ) from None


def _refuse_weights(model: str, kwargs: dict[str, Any]) -> None:
    if kwargs.get("pretrained") or kwargs.get("weights") is not None or kwargs.get("pretrained_cfg_overlay"):
        raise KDLabError(
            f"model {model!r}: kdlab never downloads weights; build without pretrained/weights and load a "
            "local checkpoint instead"
        )


def _build_timm(arch: str, num_classes: int, shape: tuple[int, ...], kwargs: dict[str, Any]) -> nn.Module:
    full = f"timm:{arch}"
    if not arch:
        raise KDLabError("model 'timm:' needs an architecture name, e.g. 'timm:resnet18'")
    _refuse_weights(full, kwargs)
    timm = _import_optional("timm", full)
    kw = {k: v for k, v in kwargs.items() if k not in ("pretrained", "weights")}
    if len(shape) == 3:
        kw.setdefault("in_chans", shape[0])
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kw)
    except RuntimeError as e:  # timm raises RuntimeError('Unknown model (...)') for unknown names
        raise KDLabError(f"model {full!r}: {e}") from None
    if isinstance(model, nn.Module) and not getattr(model, "kdlab_taps", None):
        taps = timm_taps(model)
        if taps:
            model.kdlab_taps = taps
    return model


def timm_taps(model: nn.Module) -> dict[str, str]:
    """Tap aliases from a timm model's ``feature_info`` (a list of ``{module, num_chs, reduction}``) and its
    classifier name (``pretrained_cfg["classifier"]``): ``stageK`` is timm's feature index K (the numbering of
    ``features_only``/``out_indices``), ``last`` the deepest, ``penultimate`` the classifier's input."""
    modules = dict(model.named_modules())
    info = getattr(model, "feature_info", None) or []
    paths = [f.get("module") for f in info if isinstance(f, dict)]
    taps = {f"stage{k}": p for k, p in enumerate(paths) if p in modules}
    if taps:
        taps["last"] = taps[max(taps, key=lambda t: int(t[5:]))]
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    head = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(head, (list, tuple)):  # distilled models list two heads; the first is the class head
        head = head[0] if head else None
    if isinstance(head, str) and head in modules:
        taps["penultimate"] = f"{head}:in"
    return taps


def _build_torchvision(arch: str, num_classes: int, shape: tuple[int, ...], kwargs: dict[str, Any]) -> nn.Module:
    full = f"torchvision:{arch}"
    if not arch:
        raise KDLabError("model 'torchvision:' needs an architecture name, e.g. 'torchvision:resnet18'")
    _refuse_weights(full, kwargs)
    _import_optional("torchvision", full)
    models = importlib.import_module("torchvision.models")
    kw = {k: v for k, v in kwargs.items() if k not in ("pretrained", "weights")}
    try:
        model = models.get_model(arch, weights=None, num_classes=num_classes, **kw)
    except ValueError as e:  # unknown name
        raise KDLabError(f"model {full!r}: {e}") from None
    if len(shape) == 3 and shape[0] != 3:
        _replace_first_conv(model, shape[0], full)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int, full: str) -> None:
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                1,
                module.bias is not None,
                module.padding_mode,
            )
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
            return
    raise KDLabError(f"model {full!r}: found no 3-channel Conv2d to adapt to {in_channels} input channels")


def _resolve_factory(spec: str) -> Callable[..., Any]:
    obj = import_object(spec, "model")  # the one `package.module:name` mechanism of every registry
    if not callable(obj):
        raise KDLabError(f"model factory {spec!r} is not callable")
    return obj


def _accepted(fn: Callable[..., Any], names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` ``fn`` accepts as keyword arguments (all of them if it cannot be inspected)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(names)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return set(names)
    keywordable = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {n for n in names if n in keywordable}


def _build_factory(spec: str, num_classes: int, shape: tuple[int, ...], kwargs: dict[str, Any]) -> nn.Module:
    fn = _resolve_factory(spec)
    std = {"num_classes": num_classes, "input_shape": shape}
    ok = _accepted(fn, tuple(std))
    return fn(**{k: v for k, v in std.items() if k in ok}, **kwargs)
