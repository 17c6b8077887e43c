"""Seed lists as people write them: ``[0, 1, 2]``, a count ``3`` (= 0, 1, 2), ``"0-4"`` or ``"0,1,2"``.

One parser for ``kdlab run --seeds``, ``kdlab demo --seeds`` and a study's ``seeds:``. A leaf module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

HINT = "seeds must be a list of integers, a count, or look like 0,1,2 or 0-4"


def parse_seeds(value: int | str | Sequence[Any]) -> list[int]:
    """The seeds ``value`` names; raises ValueError (with :data:`HINT`) when it names none.

    An integer is a count (``3`` = ``[0, 1, 2]``); a string is a range ``lo-hi`` (both ends included) or a
    comma-separated list (so the command-line ``--seeds 3`` is seed 3, not three seeds); a list is returned as is.
    """
    if isinstance(value, bool):
        raise ValueError(HINT)
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a seed count must be >= 1")
        return list(range(value))
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if m:
            return list(range(int(m.group(1)), int(m.group(2)) + 1))
        try:
            return [int(s) for s in value.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"{HINT}, got {value!r}") from None
    return list(value)
