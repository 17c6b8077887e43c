"""Datasets: built-in offline sets, real loaders, batch loaders and corruptions."""

from kdlab.data.base import Dataset, Split

__all__ = ["Dataset", "Split"]
