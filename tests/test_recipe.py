"""Recipe validation: defaults, overrides, and one clear error per wrong field naming path and allowed values."""

import pytest

from kdlab.errors import KDLabError
from kdlab.recipe import apply_overrides, load_recipe

BASE = {
    "name": "kd",
    "data": {"name": "digits"},
    "student": {"name": "smallcnn"},
    "teacher": {"run": "runs/t/seed0"},
    "objective": {"ce": {"weight": 0.1}, "kd": {}},
}


def test_defaults_fill_a_short_recipe():
    r = load_recipe(BASE)
    assert r.objective["kd"].params.tau == 4.0
    assert r.objective["kd"].params.weight == 0.9
    assert r.objective["ce"].params.weight == 0.1
    assert r.optim.name == "sgd" and r.schedule.name == "multistep"
    assert r.run_dir().as_posix() == "runs/kd/seed0"


def test_round_trip_through_plain_data():
    r = load_recipe(BASE)
    assert load_recipe(r.to_dict()).to_dict() == r.to_dict()


def test_overrides_parse_values_and_nested_paths():
    r = load_recipe(BASE, ["optim.lr=0.2", "objective.kd.tau=2", "schedule.milestones=[5, 8]", "train.compile=true"])
    assert r.optim.lr == 0.2 and r.objective["kd"].params.tau == 2.0
    assert r.schedule.milestones == [5, 8] and r.train.compile is True
    assert apply_overrides({"a": [1, 2]}, ["a.1=5"]) == {"a": [1, 5]}


@pytest.mark.parametrize(
    "override, expected",
    [
        (["optim.name=adam"], ["optim.name", "'sgd'", "'adamw'"]),
        (["optim.lrr=0.1"], ["optim", "unknown field 'lrr'", "did you mean 'lr'"]),
        (["objective.kd.tau=-1"], ["[kd]", "tau", "greater than 0"]),
        (["objective.kd.temperature=2"], ["[kd]", "temperature", "allowed:", "tau", "weight"]),
        (["schedule.name=step"], ["schedule.name", "'multistep'", "'cosine'", "'constant'"]),
        (["train.precision=fp8"], ["train.precision", "'fp32'", "'bf16'", "'fp16'"]),
    ],
)
def test_wrong_field_names_the_path_and_allowed_values(override, expected):
    with pytest.raises(KDLabError) as e:
        load_recipe(BASE, override)
    msg = str(e.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, msg


@pytest.mark.parametrize(
    "override, near",
    [
        (["objective={kd_loss: {}}"], "'kd'"),
        (["student.name=resnet2O"], "'resnet20'"),
        (["data.name=digit"], "'digits'"),
    ],
)
def test_misspelt_names_suggest_the_nearest(override, near):
    with pytest.raises(KDLabError, match="did you mean") as e:
        load_recipe(BASE, override)
    assert near in str(e.value)


def test_term_label_may_differ_from_term_name():
    r = load_recipe(BASE, ["objective={ce: {}, soft: {term: kd, tau: 8}}"])
    assert r.objective["soft"].term == "kd" and r.objective["soft"].params.tau == 8


def test_teacher_needs_a_source():
    with pytest.raises(KDLabError, match="teacher"):
        load_recipe(BASE, ["teacher={weights: best}"])


def test_stages_inherit_and_validate():
    r = load_recipe(
        {**BASE, "stages": [{"name": "hint", "epochs": 2, "objective": {"ce": {}}}, {"name": "kd", "epochs": 3}]}
    )
    from kdlab.engine.stages import plan_stages

    stages = plan_stages(r)
    assert [s.epochs for s in stages] == [2, 3]
    assert set(stages[1].objective) == {"ce", "kd"}
    with pytest.raises(KDLabError, match="stages.0"):
        load_recipe({**BASE, "stages": [{"name": "x", "epochs": 0}]})


def test_schedule_multiplier_scales_epochs_and_milestones():
    r = load_recipe(BASE, ["schedule.epochs=30", "schedule.milestones=[15, 22]", "schedule.multiplier=2"])
    assert r.schedule.total_epochs == 60 and r.schedule.scaled_milestones == [30, 44]


def test_yaml_and_toml_files_and_base(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {name: digits}\nstudent: {name: mlp}\nschedule: {epochs: 3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\nschedule: {milestones: [2]}\n")
    r = load_recipe(tmp_path / "child.yaml")
    assert r.name == "child" and r.schedule.epochs == 3 and r.schedule.milestones == [2]
    (tmp_path / "r.toml").write_text('name = "t"\n[student]\nname = "mlp"\n[optim]\nlr = 0.3\n')
    assert load_recipe(tmp_path / "r.toml").optim.lr == 0.3
    with pytest.raises(KDLabError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
