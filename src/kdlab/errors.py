"""User-facing errors: one clear line, caught by the CLI and printed without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KDLabError(Exception):
    """An error caused by user input (recipe, name, path); the CLI prints it as one line."""


def nearest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Closest candidate names to a misspelt one (substring matches first, then difflib)."""
    cands = list(candidates)
    low = name.lower()
    subs = [c for c in cands if low and (low in c.lower() or c.lower() in low)]
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    out: list[str] = []
    for c in close + subs:
        if c not in out:
            out.append(c)
    return out[:n]


def unknown_name(kind: str, name: str, candidates: Iterable[str]) -> KDLabError:
    cands = sorted(candidates)
    near = nearest(name, cands)
    hint = f"did you mean {', '.join(repr(c) for c in near)}? " if near else ""
    shown = ", ".join(cands[:40]) + (" ..." if len(cands) > 40 else "")
    return KDLabError(f"unknown {kind} {name!r}: {hint}known: {shown}")
