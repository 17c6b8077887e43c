"""The frozen teacher: eval mode, no parameter gradients, no_grad forward, bf16 autocast where supported.

The wrapper is a plain object, not an ``nn.Module`` attribute of anything the student owns, so the teacher
never appears in the student's state_dict, optimizer or checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdlab.capture import Capture


@dataclass
class TeacherOutput:
    logits: torch.Tensor
    feats: dict[str, torch.Tensor] = field(default_factory=dict)


class Teacher:
    def __init__(self, model: nn.Module, taps: list[str] | None = None, *, autocast: torch.dtype | None = None,
                 name: str = "teacher"):
        self.model = model
        self.name = name
        self.autocast = autocast
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.capture = Capture(model, taps or [])
        self.samples_seen = 0  # samples forwarded so far: the engine reports teacher passes per step from it

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def add_taps(self, taps: list[str]) -> None:
        """Taps are declared by the terms, so they are known only after the objective is built."""
        new = [t for t in taps if t not in self.capture.taps]
        if new:
            old = self.capture.taps
            self.capture.remove()
            self.capture = Capture(self.model, old + new)

    def _forward(self, x: torch.Tensor) -> TeacherOutput:
        self.model.eval()  # guard: whatever happened to the module, the teacher is always evaluated in eval mode
        self.samples_seen += len(x)
        if self.autocast is not None:
            with torch.autocast(x.device.type, dtype=self.autocast):
                logits = self.model(x)
        else:
            logits = self.model(x)
        feats = self.capture.pop()
        return TeacherOutput(logits.float(), {k: v.float() for k, v in feats.items()})

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        with torch.no_grad():
            return self._forward(x)

    def forward_grad(self, x: torch.Tensor) -> TeacherOutput:
        """A forward pass that keeps the graph to the *input* (BSS attacks, backward-pass samples);
        the teacher's own parameters still get no gradient."""
        with torch.enable_grad():
            return self._forward(x)

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> "Teacher":
        self.model.to(device)
        if memory_format is not None:
            self.model.to(memory_format=memory_format)
        return self


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights from safetensors, or from a torch file with ``weights_only=True`` (never pickled code)."""
    from kdlab.errors import KDLabError

    p = Path(path)
    if not p.exists():
        raise KDLabError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise KDLabError(f"{p}: weights do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
