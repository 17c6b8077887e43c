"""The recipes shipped with kdlab: inside an installed wheel they are ``kdlab/recipes`` (setup.py maps the
repository's top-level ``recipes/`` there); in a source checkout (editable install) the repository's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from kdlab.errors import KDLabError


def recipes_dir() -> Path:
    """The folder of shipped recipes (``digits/``, ``methods/``, ``cifar100/``, ...)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "recipes", here.parents[1] / "recipes"):  # wheel, then source checkout
        if (cand / "methods").is_dir():
            return cand
    raise KDLabError("the shipped recipes are missing from this installation; reinstall kdlab")


def copy_recipes(dest: str | Path, *, force: bool = False) -> Path:
    """Copy the shipped recipes to ``dest`` (a new folder, or an existing one with ``force``)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise KDLabError(f"{dest} exists and is not empty; choose a new folder or pass --force to add to it")
    src = recipes_dir()
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc"))
    return dest
