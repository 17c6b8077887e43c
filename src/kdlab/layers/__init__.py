"""Layers inserted into an unmodified student at a module path and kept at inference (e.g. letKD).

A layer builder has the signature ``fn(*, channels: int, num_classes: int, **kwargs) -> nn.Module`` and
maps a feature map to one of the same shape. ``insert_layers`` wraps the module at each path so that its
output goes through the new layer; everything else about the student stays as it was.
"""

from kdlab.layers import letkd  # noqa: F401  (registers the "letkd" layer)
from kdlab.layers.insert import Inserted, insert_layers

__all__ = ["Inserted", "insert_layers"]
