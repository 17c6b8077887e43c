"""Extra views in the engine: teacher-labelled views get no CE, label views only CE, passes are counted."""

import json

import torch

from kdlab.engine import run_recipe
from kdlab.recipe import load_recipe
from kdlab.registry import VIEWS
from kdlab.views.extra import ExtraParams, ExtraView, ViewBatch


class ShiftParams(ExtraParams):
    shift: float = 0.5


@VIEWS.register("_test_shift", description="test-only: x + shift, labels mixed with themselves")
class Shift(ExtraView):
    Params = ShiftParams
    calls = 0

    def __call__(self, inp):
        Shift.calls += 1
        lam = torch.full((len(inp.y),), 0.7)
        return ViewBatch(
            x=inp.x + self.p.shift, idx=inp.idx, y=inp.y, y_mix=(inp.y, inp.y.flip(0), lam), stats={"probe": 2.0}
        )


def recipe(tmp_path, **view):
    return load_recipe(
        {
            "name": "v",
            "out": str(tmp_path),
            "data": {"name": "digits", "batch_size": 256},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
            "objective": {"ce": {"weight": 0.1}, "kd": {}},
            "views": [{"name": "_test_shift", **view}],
            "schedule": {"epochs": 1},
            "train": {"tensorboard": False},
        }
    )


def last_record(tmp_path):
    return json.loads((tmp_path / "v" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])


def test_teacher_labelled_view_has_kd_but_no_ce_and_counts_teacher_passes(tmp_path):
    run_recipe(recipe(tmp_path), quiet=True)
    rec = last_record(tmp_path)
    assert "train/_test_shift/kd" in rec and "train/_test_shift/ce" not in rec
    assert "train/ce" in rec and "train/kd" in rec
    assert rec["view/_test_shift/probe"] == 2.0
    assert abs(rec["cost/teacher_passes"] - 2.0) < 1e-9  # clean batch + the view


def test_label_view_has_only_mixed_ce(tmp_path):
    run_recipe(recipe(tmp_path, targets="labels"), quiet=True)
    rec = last_record(tmp_path)
    assert "train/_test_shift/ce" in rec and "train/_test_shift/kd" not in rec
    assert abs(rec["cost/teacher_passes"] - 1.0) < 1e-9  # no teacher pass for a label view


def test_replace_mode_trains_on_the_view_only(tmp_path):
    run_recipe(recipe(tmp_path, mode="replace"), quiet=True)
    rec = last_record(tmp_path)
    assert "train/ce" not in rec and "train/kd" not in rec and "train/_test_shift/kd" in rec


def test_concat_and_separate_passes_both_train(tmp_path):
    for concat in (True, False):
        r = load_recipe(
            {**recipe(tmp_path / str(concat)).to_dict(), "train": {"tensorboard": False, "concat_views": concat}}
        )
        s = run_recipe(r, quiet=True)
        assert 0.0 < s["final"]["test/top1"] <= 1.0


def test_views_must_be_declared_in_the_right_block(tmp_path):
    import pytest

    from kdlab.errors import KDLabError

    with pytest.raises(KDLabError, match="belongs in `data.augment:`"):
        load_recipe({**recipe(tmp_path).to_dict(), "views": ["crop"]})
    with pytest.raises(KDLabError, match="belongs in `views:`"):
        load_recipe({**recipe(tmp_path).to_dict(), "data": {"name": "digits", "augment": ["_test_shift"]}})


@VIEWS.register("_test_const", description="test-only: every sample becomes the same image")
class Const(ExtraView):
    def __call__(self, inp):
        return ViewBatch(x=torch.zeros_like(inp.x), idx=inp.idx, y=inp.y)


def test_t_stddev_is_zero_for_a_constant_view_and_positive_for_real_data(tmp_path):
    from kdlab.engine.diagnose import t_stddev

    r = load_recipe({**recipe(tmp_path).to_dict(), "views": ["_test_const"]})
    out = t_stddev(r, epochs=2, group=2)
    assert out["by_source"]["_test_const"] < 1e-6
    assert out["by_source"]["clean"] > 1e-4
    assert out["groups"] == (2 * 6) // 2  # 1,297 samples / 256 per batch = 6 batches per epoch


class ProbeParams(ExtraParams):
    pass


@VIEWS.register("_test_student_probe", description="test-only: records the student's fc bias, returns x")
class StudentProbe(ExtraView):
    Params = ProbeParams
    uses_student = True
    seen: list = []

    def __call__(self, inp):
        StudentProbe.seen.append(inp.student.fc.bias.detach().clone())
        return ViewBatch(x=inp.x, idx=inp.idx, y=inp.y)


def test_t_stddev_of_a_student_scored_view_needs_and_uses_trained_student_weights(tmp_path):
    """Wang et al. score CutMixPick with a trained student: without --student the diagnosis is refused in one
    line; a weights file or a run folder (its student.safetensors) is what the view then sees."""
    import pytest
    from safetensors.torch import save_file

    from kdlab.engine.diagnose import t_stddev
    from kdlab.errors import KDLabError
    from kdlab.models import build_model

    pick = load_recipe({**recipe(tmp_path).to_dict(), "views": [{"name": "cutmix_pick", "criterion": "kl"}]})
    with pytest.raises(KDLabError, match="'cutmix_pick' scores its candidates with the student.*--student"):
        t_stddev(pick, epochs=1, group=1)
    r = load_recipe({**recipe(tmp_path).to_dict(), "views": ["_test_student_probe"]})
    trained = build_model("smallcnn", num_classes=10, input_shape=(1, 8, 8), width=0.25).state_dict()
    trained["fc.bias"] = torch.arange(10, dtype=torch.float32)
    run = tmp_path / "run"
    run.mkdir()
    save_file(trained, str(run / "student.safetensors"))
    for source in (run / "student.safetensors", run):
        StudentProbe.seen = []
        t_stddev(r, epochs=1, group=2, student=source)
        assert StudentProbe.seen and all(torch.equal(b, torch.arange(10.0)) for b in StudentProbe.seen)
    with pytest.raises(KDLabError, match="--student"):
        t_stddev(r, epochs=1, group=2, student=tmp_path / "missing")
