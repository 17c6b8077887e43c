"""A user's own code and files: `package.module:name` in every registry, `plugins:`, recipe paths relative to
their file, `kdlab list datasets` options, num_classes in kwargs, timm aliases, a student's initial weights."""

import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.capture import Capture
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe, read_file
from kdlab.registry import DATASETS, LAYERS, TERMS, VIEWS

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import torch
from torch import nn
from kdlab.data.base import Dataset, Split
from kdlab.methods import Term, TermParams
from kdlab.registry import TERMS
from kdlab.views.basic import Flip


def tiny(n: int = 40, dim: int = 5):
    """four-class toy vectors"""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = torch.arange(n) % 4
    return Dataset("tiny", Split(x, y), Split(x[:8], y[:8]), 4, (0.0,) * dim, (1.0,) * dim)


class L2Params(TermParams):
    weight: float = 0.5


@TERMS.register("{term}", description="squared logits")
class L2(Term):
    Params = L2Params

    def forward(self, ctx):
        return {{"loss": ctx.s_logits.pow(2).mean()}}


class Scale(nn.Module):
    def __init__(self, channels=1, factor=2.0, **_):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


MyFlip = Flip
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module `userplug_<id>` in a temporary folder on sys.path, registering a term on import."""
    name = f"userplug_{tmp_path.name.replace('-', '_')}"
    term = f"l2_{name}"
    (tmp_path / f"{name}.py").write_text(PLUGIN.format(term=term))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield types.SimpleNamespace(module=name, term=term, folder=tmp_path)
    sys.modules.pop(name, None)


def test_every_registry_resolves_module_colon_name(plugin):
    m = plugin.module
    ds = DATASETS.get(f"{m}:tiny")(n=12)
    assert len(ds.train) == 12 and ds.num_classes == 4
    assert DATASETS.entry(f"{m}:tiny").description == "four-class toy vectors"
    assert VIEWS.get(f"{m}:MyFlip") is sys.modules[m].Flip
    assert LAYERS.get(f"{m}:Scale")(factor=3.0)(torch.ones(1)).item() == 3.0
    # a name the module registered on import is found through the module as well
    assert TERMS.get(f"{m}:{plugin.term}") is sys.modules[m].L2
    assert f"{m}:tiny" in DATASETS and f"{m}:nope" not in DATASETS
    assert "kdlab_no_such_mod:x" not in TERMS
    assert f"{m}:tiny" not in DATASETS.names()  # imported names are not listed as built-ins


def test_module_names_in_a_recipe_validate_and_build(plugin):
    m = plugin.module
    r = load_recipe(
        {
            "data": {"name": f"{m}:tiny", "kwargs": {"n": 16}, "augment": [f"{m}:MyFlip"]},
            "student": "mlp",
            "objective": {"ce": {}, "l2": {"term": f"{m}:L2", "weight": 0.25}},
        }
    )
    assert r.objective["l2"].params.weight == 0.25
    assert type(r.objective["l2"].build()).__name__ == "L2"
    from kdlab.data import build_dataset

    assert len(build_dataset(r.data.name, **r.data.kwargs).train) == 16


def test_errors_name_the_module_and_the_attribute(plugin):
    with pytest.raises(KDLabError, match="cannot import module 'kdlab_no_such_mod'"):
        DATASETS.get("kdlab_no_such_mod:data")
    with pytest.raises(KDLabError) as e:
        load_recipe({"data": {"name": f"{plugin.module}:tiyn"}, "student": "mlp"})
    msg = str(e.value)
    assert "no attribute 'tiyn'" in msg and "did you mean 'tiny'" in msg and "\n" not in msg


def test_plugins_are_imported_before_validation_and_kept(plugin):
    raw = {"student": "mlp", "objective": {plugin.term: {}}}
    with pytest.raises(KDLabError, match=f"unknown method '{plugin.term}'"):
        load_recipe(raw)  # the term exists only once its module is imported
    r = load_recipe({**raw, "plugins": [plugin.module]})
    assert r.plugins == [plugin.module] and r.objective[plugin.term].params.weight == 0.5
    assert load_recipe(r.to_dict()).to_dict() == r.to_dict()  # the saved recipe.yaml imports them again
    with pytest.raises(KDLabError, match="plugins: cannot import 'kdlab_missing_plugin'"):
        load_recipe({**raw, "plugins": ["kdlab_missing_plugin"]})


def test_paths_starting_with_dot_resolve_relative_to_their_file(tmp_path, monkeypatch):
    (tmp_path / "proj" / "recipes").mkdir(parents=True)
    (tmp_path / "proj" / "base.yaml").write_text("data: {name: digits}\nstudent: mlp\n")
    (tmp_path / "proj" / "recipes" / "r.yaml").write_text(
        textwrap.dedent("""\
        base: ../base.yaml
        out: runs
        teacher: {run: runs/t/seed0, recipe: ./teacher.yaml, checkpoint: ../w/t.safetensors}
        student: {name: mlp, weights: ./s.pt}
        """)
    )
    monkeypatch.chdir(tmp_path)  # anywhere but the recipe's folder
    data = read_file("proj/recipes/r.yaml")
    here = (tmp_path / "proj").resolve()
    assert data["teacher"]["recipe"] == str(here / "recipes" / "teacher.yaml")
    assert data["teacher"]["checkpoint"] == str(here / "w" / "t.safetensors")
    assert data["student"]["weights"] == str(here / "recipes" / "s.pt")
    assert data["teacher"]["run"] == "runs/t/seed0" and data["out"] == "runs"  # outputs: the working directory
    assert data["data"] == {"name": "digits"}  # base merged from ../base.yaml


def test_dot_paths_from_overrides_mean_the_working_directory_and_survive_a_reload(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "r.yaml").write_text("student: {name: mlp, weights: ./in_p.pt}\n")
    monkeypatch.chdir(tmp_path)
    r = load_recipe("p/r.yaml", ["teacher={model: mlp, checkpoint: ./t.pt}"])
    assert r.student.weights == str(tmp_path.resolve() / "p" / "in_p.pt")
    assert r.teacher.checkpoint == str(tmp_path.resolve() / "t.pt")  # an override: the working directory
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(__import__("yaml").safe_dump(r.to_dict()))
    assert load_recipe(tmp_path / "run" / "recipe.yaml").to_dict() == r.to_dict()  # as run_recipe compares


def test_shipped_recipes_work_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = load_recipe([REPO / "recipes/digits/pair.yaml", REPO / "recipes/methods/kd.yaml"])
    assert Path(r.teacher.recipe).is_file()
    assert load_recipe(r.teacher.recipe).name == "teacher"
    for pair in sorted((REPO / "recipes").glob("*/*.yaml")):
        t = read_file(pair).get("teacher")
        if isinstance(t, dict) and t.get("recipe"):
            assert Path(t["recipe"]).is_file(), pair


def test_list_datasets_shows_every_builders_options(capsys):
    from kdlab.cli import main

    assert main(["list", "datasets", "--markdown"]) == 0
    out = capsys.readouterr().out
    row = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| `")}
    assert "`test_fraction=None`" in row["`arrays`"] and "`mean='auto'`" in row["`arrays`"]
    assert "`num_classes=None`" in row["`arrays`"]
    assert "`train_subset=None`" in row["`digits`"]
    assert main(["list", "datasets"]) == 0
    assert "options" in capsys.readouterr().out


def test_num_classes_in_student_kwargs_is_a_one_line_error_not_a_crash():
    with pytest.raises(KDLabError) as e:
        load_recipe({"student": {"name": "mlp", "kwargs": {"num_classes": 10}}})
    assert "num_classes" in str(e.value) and "\n" not in str(e.value)


class _TimmLike(nn.Module):
    """What timm.create_model returns: feature_info (a stem then 2 stages) and pretrained_cfg naming the head."""

    def __init__(self, num_classes, in_chans=3, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.layer1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.layer2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Sequential()
        self.head.fc = nn.Linear(8, num_classes)
        self.feature_info = [
            dict(module="conv1", num_chs=4, reduction=1),
            dict(module="layer1", num_chs=8, reduction=2),
            dict(module="layer2", num_chs=8, reduction=4),
        ]
        self.pretrained_cfg = {"classifier": "head.fc"}

    def forward(self, x):
        x = self.layer2(self.layer1(self.conv1(x)))
        return self.head.fc(x.mean((2, 3)))


def test_timm_models_get_aliases_from_feature_info(monkeypatch):
    from kdlab.models import build_model

    fake = types.ModuleType("timm")
    fake.create_model = lambda name, pretrained, num_classes, **kw: _TimmLike(num_classes, **kw)
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = build_model("timm:tiny", num_classes=5, input_shape=(1, 8, 8))
    assert model.kdlab_taps == {
        "stage0": "conv1",
        "stage1": "layer1",
        "stage2": "layer2",
        "last": "layer2",
        "penultimate": "head.fc:in",
    }
    cap = Capture(model, ["@stage1", "@penultimate"])
    model(torch.zeros(2, 1, 8, 8))
    feats = cap.pop()
    assert feats["@stage1"].shape == (2, 8, 4, 4) and feats["@penultimate"].shape == (2, 8)


def test_timm_model_for_real_when_installed():
    timm = pytest.importorskip("timm", reason="timm is optional (pip install 'kdlab[vision]')")
    from kdlab.models import build_model

    model = build_model("timm:resnet18", num_classes=7, input_shape=(1, 32, 32))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7) and timm is not None
    assert model.kdlab_taps["stage4"] == "layer4" and model.kdlab_taps["penultimate"] == "fc:in"


def test_student_starts_from_local_weights(tmp_path):
    from safetensors.torch import save_file

    from kdlab.data import build_dataset
    from kdlab.engine.run import build_model_for

    ds = build_dataset("digits", train_subset=50)
    src = build_model_for(load_recipe({"student": "mlp"}).student, ds)
    with torch.no_grad():
        for p in src.parameters():
            p.fill_(0.125)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(src.state_dict(), tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        built = build_model_for(load_recipe({"student": {"name": "mlp", "weights": str(tmp_path / f)}}).student, ds)
        assert all(torch.equal(p, torch.full_like(p, 0.125)) for p in built.parameters())
    with pytest.raises(KDLabError, match="weights do not fit"):
        build_model_for(load_recipe({"student": {"name": "smallcnn", "weights": str(tmp_path / "w.pt")}}).student, ds)


def test_study_files_resolve_dot_paths_in_inline_recipe_parts(tmp_path, monkeypatch):
    from kdlab.study import load_study

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.yaml").write_text(
        "out: runs/s\nbase: [pair.yaml]\nmethods:\n  kd: {recipe: {student: {name: mlp, weights: ./init.pt}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    study, _ = load_study("s/study.yaml")
    assert study.methods["kd"].recipe["student"]["weights"] == str((tmp_path / "s" / "init.pt").resolve())
    assert study.base == [str(Path("s") / "pair.yaml")]  # file lists keep their own study-relative rule
