"""The study file: its pydantic models and :func:`load_study` (validation, relative paths resolved).

The file format is described in :mod:`kdlab.study`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from kdlab.errors import KDLabError
from kdlab.recipe import resolve_relative, tomllib  # tomllib: tomli on Python 3.10
from kdlab.schema import Strict, format_error
from kdlab.seeds import parse_seeds


def _str_list(v: Any) -> Any:
    if v is None:
        return []
    return [v] if isinstance(v, str) else v


class MethodEntry(Strict):
    """One method of a study: recipe file(s), an inline recipe fragment, and overrides."""

    file: list[str] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"file": [data]}
        if isinstance(data, list):  # files and key=value overrides, told apart by "="
            return {"file": [d for d in data if "=" not in str(d)], "overrides": [d for d in data if "=" in str(d)]}
        return data

    _files = field_validator("file", "overrides", mode="before")(lambda cls, v: _str_list(v))


class CellValue(Strict):
    """The overrides of one value of one grid axis."""

    runs: list[str] = Field(default_factory=list)
    teacher: list[str] = Field(default_factory=list)
    all: list[str] = Field(default_factory=list)
    methods: dict[str, list[str]] = Field(default_factory=dict)
    x: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, (list, str)):
            return {"runs": _str_list(data)}
        return data

    _lists = field_validator("runs", "teacher", "all", mode="before")(lambda cls, v: _str_list(v))


class TeacherPlan(Strict):
    """How the teacher of every grid cell is trained (one per distinct recipe)."""

    recipe: list[str]
    overrides: list[str] = Field(default_factory=list)
    weights: Literal["final", "best"] = "final"
    clean: bool = False
    same_data: bool = True
    seed: int = 0
    per_seed: bool = False

    _lists = field_validator("recipe", "overrides", mode="before")(lambda cls, v: _str_list(v))


class Study(Strict):
    """A whole study file: methods x grid cells x seeds, the teacher of each cell, the baseline."""

    name: str = "study"
    out: str
    base: list[str] = Field(default_factory=list)
    methods: dict[str, MethodEntry]
    grid: dict[str, dict[str, CellValue]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    overrides: list[str] = Field(default_factory=list)
    teacher: TeacherPlan | None = None
    corruption_seed: int | None = 0
    baseline: str | None = "ce"

    _lists = field_validator("base", "overrides", mode="before")(lambda cls, v: _str_list(v))

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        return parse_seeds(v) if isinstance(v, (int, str)) else v

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, dict):
            for axis, values in v.items():
                if not isinstance(values, dict) or not values:
                    raise ValueError(f"grid axis {axis!r} must map value labels to overrides")
            return {str(a): {str(k): val for k, val in vals.items()} for a, vals in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self) -> Study:
        if not self.methods:
            raise ValueError("a study needs at least one method")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        for axis, values in self.grid.items():
            for value, cell in values.items():
                unknown = set(cell.methods) - set(self.methods)
                if unknown:
                    raise ValueError(
                        f"grid.{axis}.{value}.methods names unknown methods {sorted(unknown)}; "
                        f"known: {', '.join(self.methods)}"
                    )
        return self


def load_study(source: str | Path | dict[str, Any] | Study, *, root: str | Path | None = None) -> tuple[Study, Path]:
    """Validate a study; returns it with relative file paths resolved (against the study file's folder, or
    ``root``/the working directory for a dict) and the folder they were resolved against."""
    if isinstance(source, Study):
        return source, Path(root or ".")
    if isinstance(source, dict):
        data, where, folder = copy.deepcopy(source), "study", Path(root or ".")
    else:
        path = Path(source)
        if not path.is_file():
            raise KDLabError(f"study file not found: {path}")
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise KDLabError(f"{path}: a study must be a mapping at top level")
        data = resolve_relative(data, path.resolve().parent)
        data.setdefault("name", path.stem)
        where, folder = str(path), path.parent
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise KDLabError(f"{where}: " + "; ".join(format_error(err) for err in e.errors())) from None

    def rel(p: str) -> str:
        return str(p) if Path(p).is_absolute() else str(folder / p)

    study.base = [rel(p) for p in study.base]
    for m in study.methods.values():
        m.file = [rel(p) for p in m.file]
    if study.teacher is not None:
        study.teacher.recipe = [rel(p) for p in study.teacher.recipe]
    if study.baseline is not None and study.baseline not in study.methods:
        study.baseline = None  # no gain table; a study without `ce` is legal
    return study, folder
