"""Batched augmentation views computed on the device."""

from kdlab.views import basic  # noqa: F401  (registers crop, flip, crop_flip)
from kdlab.views import backward  # noqa: F401
from kdlab.views import text_backward  # noqa: F401  (registers backward_text)
from kdlab.views import mix  # noqa: F401
from kdlab.views.basic import Crop, CropFlip, Flip, View, normalize

__all__ = ["Crop", "CropFlip", "Flip", "View", "normalize"]
