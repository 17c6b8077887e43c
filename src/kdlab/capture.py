"""Capture intermediate features of unmodified models by dotted module path, with forward hooks.

``"layer3"`` captures a module's output, ``"fc:in"`` its (first) input — e.g. the penultimate embedding.
``"@name"`` is a portable alias looked up in the model's ``kdlab_taps`` dict (the zoo models declare
``@stage1``.. ``@stageN``, ``@pre_stageK``, ``@penultimate``), so one method recipe serves many pairs.
A wrong path raises a KDLabError listing the nearest real module names. No model is rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kdlab.errors import KDLabError, nearest


def split_tap(tap: str) -> tuple[str, bool]:
    """``"fc:in"`` -> ("fc", True); ``"layer3"`` -> ("layer3", False)."""
    if tap.endswith(":in"):
        return tap[:-3], True
    if tap.endswith(":out"):
        return tap[:-4], False
    return tap, False


TAPS_ATTR = "kdlab_taps"


def resolve_alias(model: nn.Module, tap: str) -> str:
    """``"@stage3"`` -> the model's own path for it (e.g. ``"layer3"``); other taps are returned as is."""
    if not tap.startswith("@"):
        return tap
    aliases = getattr(model, TAPS_ATTR, None) or {}
    name, dot, suffix = tap[1:].partition(".")  # "@last.layer.scores": a submodule below the alias
    if name in aliases and dot:
        base = aliases[name]
        if base.endswith(":in"):
            raise KDLabError(f"tap {tap!r}: alias @{name} is a module input ({base}); no submodule path below it")
        return f"{base}.{suffix}"
    if name not in aliases:
        known = ", ".join("@" + a for a in aliases) or "none (give module paths instead)"
        near = nearest(name, list(aliases), n=3)
        hint = f"did you mean {', '.join('@' + n for n in near)}? " if near else ""
        raise KDLabError(f"{type(model).__name__} has no tap alias {tap!r}: {hint}aliases: {known}")
    return aliases[name]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    names = [n for n in modules if n]
    near = nearest(path, names, n=6)
    hint = (
        f"nearest: {', '.join(near)}" if near else f"top-level modules: {', '.join(n for n in names if '.' not in n)}"
    )
    raise KDLabError(f"no module {path!r} in {type(model).__name__}; {hint}")


class Capture:
    """Forward hooks that store the latest tensor seen at each tap; ``pop()`` hands them over and clears."""

    def __init__(self, model: nn.Module, taps: Iterable[str]):
        self.taps = list(dict.fromkeys(taps))
        self.store: dict[str, torch.Tensor] = {}
        self._handles = []
        for tap in self.taps:
            path, want_input = split_tap(resolve_alias(model, tap))
            module = resolve_module(model, path)
            self._handles.append(module.register_forward_hook(self._hook(tap, want_input)))

    def _hook(self, tap: str, want_input: bool):
        def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
            value = inputs[0] if want_input else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            self.store[tap] = value

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.store = self.store, {}
        missing = [t for t in self.taps if t not in out]
        if missing:
            raise KDLabError(f"taps {missing} were not reached in the forward pass (module unused?)")
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.no_grad()
def probe_shapes(
    model: nn.Module, taps: Iterable[str], input_shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> dict[str, torch.Size]:
    """Per-sample shapes at each tap (and ``"logits"``), from one dummy batch of 2 in eval mode."""
    taps = list(taps)
    was_training = model.training
    model.eval()
    cap = Capture(model, taps)
    try:
        out = model(torch.zeros(2, *input_shape, device=device))
        feats = cap.pop() if taps else {}
    finally:
        cap.remove()
        model.train(was_training)
    shapes = {k: v.shape[1:] for k, v in feats.items()}
    shapes["logits"] = out.shape[1:]
    return shapes
