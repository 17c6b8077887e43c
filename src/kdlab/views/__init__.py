"""Batched augmentation views computed on the device."""

from kdlab.views import (
    backward,  # noqa: F401
    basic,  # noqa: F401  (registers crop, flip, crop_flip)
    mix,  # noqa: F401
    text_backward,  # noqa: F401  (registers backward_text)
)
from kdlab.views.basic import Crop, CropFlip, Flip, View, normalize

__all__ = ["Crop", "CropFlip", "Flip", "View", "normalize"]
