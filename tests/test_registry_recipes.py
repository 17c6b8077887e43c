"""Every shipped recipe validates, and every method recipe composes with the pair files it is meant for.

Parametrised over the files in ``recipes/``, so a new recipe is covered without writing a test. A method file
named ``<method>_<pair>.yaml`` is meant for that pair; one whose comments say ``kdlab run PAIR METHOD`` for the
pairs named there (letKD: CIFAR ResNets); every other file of ``recipes/methods/`` for every digits, CIFAR-10 and
CIFAR-100 pair file (on the two-stage smallcnn digits pair, only methods whose taps it has). "Composes" means
more than validating: each stage's objective is set up on the pair's real student and teacher networks (taps,
connectors, inserted layers), as the trainer does before its first step. Every ``kdlab run A.yaml B.yaml``
line in a recipe's comments is checked too (and a file it names after the first is a fragment).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdlab.recipe import load_recipe
from kdlab.study import load_study, plan_study

ROOT = Path(__file__).resolve().parents[1] / "recipes"
PAIRS = [
    ROOT / "digits" / "pair.yaml",
    ROOT / "digits" / "resnet20-resnet8.yaml",
    *sorted((ROOT / "cifar10").glob("*.yaml")),
    *sorted((ROOT / "cifar100").glob("*.yaml")),
]
PAIRS = [p for p in PAIRS if not p.name.startswith("_")]  # _common.yaml: a shared fragment, not a recipe
METHODS = sorted((ROOT / "methods").glob("*.yaml"))
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
USAGE = sorted(
    {
        tuple(re.findall(r"(recipes/\S+\.ya?ml)", line))
        for p in ROOT.rglob("*.yaml")
        for line in p.read_text().splitlines()
        if re.match(r"#\s+kdlab run ", line)
    }
)
FRAGMENTS = {ROOT.parent / f for files in USAGE for f in files[1:]}
STANDALONE = sorted(
    p
    for p in ROOT.rglob("*.yaml")
    if not p.name.startswith("_") and p.parent.name not in ("methods", "studies") and p not in FRAGMENTS
)


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _pairs_for(method: Path) -> list[Path]:
    """The pair in the file's name, else the pairs its own `kdlab run PAIR METHOD` lines name, else all."""
    own = [p for p in PAIRS if method.stem.endswith("_" + p.stem)]
    named = [ROOT.parent / files[0] for files in USAGE if len(files) > 1 and ROOT.parent / files[1] == method]
    return own or [p for p in PAIRS if p in named] or PAIRS


def test_the_lists_are_not_empty():
    assert len(PAIRS) >= 5 and len(METHODS) >= 20 and STUDIES and STANDALONE and len(USAGE) >= 10


@pytest.mark.parametrize("files", USAGE, ids=" ".join)
def test_every_documented_command_line_composes(files):
    load_recipe([ROOT.parent / f for f in files])


@pytest.mark.parametrize("path", STANDALONE, ids=_id)
def test_every_shipped_recipe_validates(path):
    load_recipe(path)


@pytest.mark.parametrize("path", STUDIES, ids=_id)
def test_every_shipped_study_plans_and_validates_its_runs(path, tmp_path):
    study, _ = load_study(path)
    runs = plan_study(study, out=tmp_path, validate=True)
    assert any(r.kind == "student" for r in runs)


# --------------------------------------------------------------------- composition on the pairs' networks
SHAPES = {"digits": ((1, 8, 8), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
_NETS: dict = {}


def _networks(pair: Path, recipe):
    """Student (with the method's inserted layers) and teacher networks of a composed recipe, at the pair's
    input shape; the teacher is rebuilt from its recipe file (its run folder need not exist)."""
    from kdlab.build import build_network

    shape, classes = SHAPES[pair.parent.name]  # the folder names the data: recipes/<data>/<pair>.yaml
    spec = recipe.teachers[0] if recipe.teachers else None
    tspec = None if spec is None else (spec.model or load_recipe(spec.recipe).student)
    key = (str(pair), None if tspec is None else tspec.model_dump_json())
    if key not in _NETS:
        _NETS[key] = None if tspec is None else build_network(tspec, classes, shape, initial_weights=False)
    student = build_network(recipe.student, classes, shape, initial_weights=False)
    return student, _NETS[key], shape, classes


SMALL_PAIR = ROOT / "digits" / "pair.yaml"  # smallcnn x2 -> x0.25: logit and penultimate-feature methods


def _offers(model, taps) -> bool:
    from kdlab.capture import resolve_alias
    from kdlab.errors import KDLabError

    try:
        for tap in taps:
            resolve_alias(model, tap)
    except KDLabError:
        return False
    return True


@pytest.mark.parametrize("method", METHODS, ids=_id)
def test_every_method_recipe_composes_with_its_pairs(method):
    """The composed recipe validates, and every tap, connector and inserted layer the method names exists on the
    pair's student and teacher:
    the objective of each stage is set up on probed shapes, as the trainer does before the first step."""
    from kdlab.capture import probe_shapes
    from kdlab.engine.stages import plan_stages
    from kdlab.methods.base import Objective, SetupInfo

    for pair in _pairs_for(method):
        recipe = load_recipe([pair, method])
        student, teacher, shape, classes = _networks(pair, recipe)
        for stage in plan_stages(recipe):
            obj = Objective({label: spec.build() for label, spec in stage.objective.items()})
            taps = obj.taps()
            if pair == SMALL_PAIR and not _offers(student, taps.student):
                continue  # a stage method on the two-stage smallcnn pair: digits/resnet20-resnet8.yaml is its pair
            s_shapes = probe_shapes(student, taps.student, shape)
            t_shapes = probe_shapes(teacher, taps.teacher, shape) if teacher is not None else {}
            obj.setup(s_shapes, t_shapes, SetupInfo(num_train=1000, num_classes=classes, input_shape=shape))
