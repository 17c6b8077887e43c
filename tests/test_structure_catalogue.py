"""Field documentation lives in the code (``Field(description=...)``) and reaches users through ``kdlab list
--verbose`` and ``docs/catalogue.md``, which must be what ``kdlab list --markdown`` prints now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kdlab.catalogue import REGISTRIES, fields, markdown, params_model, recipe_fields
from kdlab.cli import main

CATALOGUE = Path(__file__).resolve().parents[1] / "docs" / "catalogue.md"


def test_docs_catalogue_is_what_kdlab_list_markdown_prints():
    # a fresh process: other tests register their own entries in this one
    out = subprocess.run(
        [sys.executable, "-m", "kdlab.cli", "list", "--markdown"], capture_output=True, text=True, check=True
    ).stdout
    assert CATALOGUE.read_text(encoding="utf-8") == out, (
        "docs/catalogue.md is stale: regenerate it with `kdlab list --markdown > docs/catalogue.md`"
    )
    assert out.startswith(markdown().split("\n")[0])


def test_every_recipe_field_has_a_description():
    missing = [path for path, _, desc in recipe_fields() if not desc]
    assert not missing, f"recipe fields without Field(description=...): {missing}"


def test_recipe_fields_reach_nested_blocks_once():
    paths = [p for p, _, _ in recipe_fields()]
    assert {"data.corruption.noise.rate", "teacher.cache.views", "stages[].trainable", "train.compile.mode"} <= set(
        paths
    )
    assert "teacher.model.name" not in paths  # the model block is described once, under `student`


def test_every_method_and_view_parameter_has_a_description():
    builtin = [
        (kind, e)
        for kind in ("methods", "views")
        for e in REGISTRIES[kind].entries()
        if e.obj.__module__.startswith("kdlab.")
    ]  # other tests register their own entries here
    missing = [
        f"{kind}: {e.name}.{n}"
        for kind, e in builtin
        if params_model(e.obj) is not None
        for n, _, desc in fields(params_model(e.obj))
        if not desc
    ]
    assert not missing, f"parameters without Field(description=...): {missing}"


def test_list_verbose_shows_descriptions(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps to the terminal width
    assert main(["list", "views", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "probability that a sample is flipped" in out and "p=0.5" in out
