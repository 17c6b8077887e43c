"""Every shipped recipe validates, and every method recipe composes with the pair files it is meant for.

Parametrised over the files in ``recipes/``, so a new recipe is covered without writing a test. A method file
named ``<method>_<pair>.yaml`` is meant for that pair only; every other file of ``recipes/methods/`` for every
digits, CIFAR-10 and CIFAR-100 pair file. Every ``kdlab run A.yaml B.yaml`` line in a recipe's comments is a
composition its readers will type, so it is checked too (and a file it names after the first is a fragment).
"""

from __future__ import annotations

from pathlib import Path

import re

import pytest

from kdlab.recipe import load_recipe
from kdlab.study import load_study, plan_study

ROOT = Path(__file__).resolve().parents[1] / "recipes"
PAIRS = [ROOT / "digits" / "pair.yaml", ROOT / "digits" / "resnet20-resnet8.yaml",
         *sorted((ROOT / "cifar10").glob("*.yaml")), *sorted((ROOT / "cifar100").glob("*.yaml"))]
PAIRS = [p for p in PAIRS if not p.name.startswith("_")]  # _common.yaml: a shared fragment, not a recipe
METHODS = sorted((ROOT / "methods").glob("*.yaml"))
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
USAGE = sorted({tuple(re.findall(r"(recipes/\S+\.ya?ml)", line)) for p in ROOT.rglob("*.yaml")
                for line in p.read_text().splitlines() if re.match(r"#\s+kdlab run ", line)})
FRAGMENTS = {ROOT.parent / f for files in USAGE for f in files[1:]}
STANDALONE = sorted(p for p in ROOT.rglob("*.yaml") if not p.name.startswith("_")
                    and p.parent.name not in ("methods", "studies") and p not in FRAGMENTS)


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _pairs_for(method: Path) -> list[Path]:
    own = [p for p in PAIRS if method.stem.endswith("_" + p.stem)]
    return own or PAIRS


def test_the_lists_are_not_empty():
    assert len(PAIRS) >= 5 and len(METHODS) >= 20 and STUDIES and STANDALONE and len(USAGE) >= 10


@pytest.mark.parametrize("files", USAGE, ids=" ".join)
def test_every_documented_command_line_composes(files):
    load_recipe([ROOT.parent / f for f in files])


@pytest.mark.parametrize("path", STANDALONE, ids=_id)
def test_every_shipped_recipe_validates(path):
    load_recipe(path)


@pytest.mark.parametrize("method", METHODS, ids=_id)
def test_every_method_recipe_composes_with_its_pairs(method):
    for pair in _pairs_for(method):
        r = load_recipe([pair, method])
        assert r.objective, f"{_id(pair)} + {_id(method)}: no objective"


@pytest.mark.parametrize("path", STUDIES, ids=_id)
def test_every_shipped_study_plans_and_validates_its_runs(path, tmp_path):
    study, _ = load_study(path)
    runs = plan_study(study, out=tmp_path, validate=True)
    assert any(r.kind == "student" for r in runs)
