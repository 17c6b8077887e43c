"""The base of every validated block (recipes, terms, views, corruption, studies) and its shared validators.

A leaf: it imports only pydantic and :mod:`kdlab.errors` (itself standard-library only), so any kdlab module can
derive from :class:`Strict` without an import cycle (``data/corrupt.py`` used to import it from ``recipe.py``,
which imports ``data/corrupt.py``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from kdlab.errors import nearest


class Strict(BaseModel):
    """Base for every recipe block: unknown keys are errors that name the nearest real field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # lr=inf is a typo

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            for key in data:
                if key not in allowed:
                    near = nearest(str(key), allowed, n=3)
                    hint = f"did you mean {', '.join(map(repr, near))}? " if near else ""
                    raise ValueError(f"unknown field {key!r}: {hint}allowed: {', '.join(sorted(allowed))}")
        return data


def format_error(err: dict[str, Any]) -> str:
    """One pydantic error as ``field.path: message (got value)``."""
    # pydantic's own branch labels ("function-after[...]", "list[...]" of a union) are not recipe fields
    loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "list[")))
    msg = err.get("msg", "")
    msg = msg.removeprefix("Value error, ")
    inp = err.get("input")
    got = f" (got {inp!r})" if err.get("type") not in ("value_error", "missing") and not isinstance(inp, dict) else ""
    return f"{loc}: {msg}{got}" if loc else f"{msg}{got}"


def validate_params(cls: type[BaseModel], params: dict[str, Any]) -> BaseModel:
    """``cls.model_validate(params)`` with every problem in one ValueError line (for use inside a validator)."""
    try:
        return cls.model_validate(params)
    except ValidationError as e:
        raise ValueError("; ".join(format_error(err) for err in e.errors())) from None
