"""Batched augmentation views computed on the device."""
