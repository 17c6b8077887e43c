"""The engine: run folder contents, bitwise resume after a crash, atomic checkpoints, frozen teacher."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdlab.capture import Capture, probe_shapes
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import resume_run, run_recipe
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe
from kdlab.teacher import Teacher


def tiny_recipe(out, **extra):
    data = {
        "name": "kd",
        "out": str(out),
        "seed": 3,
        "data": {"name": "digits", "batch_size": 128, "augment": [{"name": "crop", "padding": 1}]},
        "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
        "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
        "objective": {"ce": {"weight": 0.1}, "kd": {}},
        "schedule": {"epochs": 4, "milestones": [2]},
        "train": {"tensorboard": False},
    }
    data.update(extra)
    return load_recipe(data)


class Crash:
    def __init__(self, global_epoch, step):
        self.at = (global_epoch, step)

    def on_step_end(self, trainer, state):
        if (state["global_epoch"], state["step"]) == self.at:
            raise RuntimeError("simulated crash")


def test_run_folder_has_provenance_metrics_and_weights(tmp_path):
    s = run_recipe(tiny_recipe(tmp_path), quiet=True)
    d = tmp_path / "kd" / "seed3"
    for f in [
        "recipe.yaml",
        "env.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "student.safetensors",
        "best.safetensors",
        "summary.json",
    ]:
        assert (d / f).exists(), f
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in lines] == [1, 2, 3, 4]
    for key in [
        "train/loss",
        "train/kd",
        "train/ce",
        "test/top1",
        "test/top5",
        "test/nll",
        "test/ece",
        "test/agree",
        "test/kl_ts",
        "lr",
    ]:
        assert key in lines[-1], key
    assert lines[0]["lr"] == pytest.approx(0.05) and lines[-1]["lr"] == pytest.approx(0.005)
    assert s["final"]["test/top1"] == lines[-1]["test/top1"]
    assert s["best"]["test/top1"] == max(r["test/top1"] for r in lines)
    env = json.loads((d / "env.json").read_text())["runs"][0]
    assert env["torch"] == torch.__version__ and "python" in env
    # a finished run is returned as is, not retrained
    assert run_recipe(tiny_recipe(tmp_path), quiet=True)["wall_s"] == s["wall_s"]


def test_resume_after_crash_is_bitwise_identical(tmp_path):
    run_recipe(tiny_recipe(tmp_path / "a"), quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(tiny_recipe(tmp_path / "b"), callbacks=[Crash(2, 3)], quiet=True)  # mid third epoch
    b = tmp_path / "b" / "kd" / "seed3"
    assert not (b / "summary.json").exists()
    state = ckpt.load_state(b / "checkpoint.safetensors")
    assert state["global_epoch"] == 2
    resume_run(b, quiet=True)
    wa = load_file(str(tmp_path / "a" / "kd" / "seed3" / "student.safetensors"))
    wb = load_file(str(b / "student.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    lines = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in lines] == [1, 2, 3, 4]


def test_multistage_resume_is_bitwise_identical(tmp_path):
    extra = {"stages": [{"name": "warm", "epochs": 2, "objective": {"ce": {}}}, {"name": "kd", "epochs": 2}]}
    run_recipe(tiny_recipe(tmp_path / "a", **extra), quiet=True)
    with pytest.raises(RuntimeError):
        run_recipe(tiny_recipe(tmp_path / "b", **extra), callbacks=[Crash(3, 1)], quiet=True)
    resume_run(tmp_path / "b" / "kd" / "seed3", quiet=True)
    wa = load_file(str(tmp_path / "a" / "kd" / "seed3" / "student.safetensors"))
    wb = load_file(str(tmp_path / "b" / "kd" / "seed3" / "student.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_crash_during_checkpoint_save_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ckpt.save_state(path, {"epoch": 1, "w": torch.ones(3), "opt": {0: {"m": torch.zeros(2)}}})
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError):
        ckpt.save_state(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    state = ckpt.load_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert torch.equal(state["opt"][0]["m"], torch.zeros(2))  # int keys survive
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_state_round_trip_keeps_types():
    opt = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(2, 3)
    opt.param_groups[0]["params"][1].grad = torch.ones(2)
    opt.step()
    tensors = {}
    back = ckpt.unflatten(json.loads(json.dumps(ckpt.flatten(opt.state_dict(), tensors))), tensors)
    sd = opt.state_dict()
    assert back["param_groups"] == sd["param_groups"]
    assert torch.equal(back["state"][0]["momentum_buffer"], sd["state"][0]["momentum_buffer"])


def test_teacher_is_frozen_in_eval_and_outside_the_student():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    teacher = Teacher(model, ["1"])
    model.train()  # someone flips it: the teacher must still evaluate in eval mode
    stats = model[1].running_mean.clone()
    out = teacher(torch.randn(16, 4))
    assert not model.training
    assert torch.equal(model[1].running_mean, stats)
    assert out.logits.grad_fn is None and out.feats["1"].shape == (16, 8)
    assert all(not p.requires_grad for p in model.parameters())
    x = torch.randn(5, 4, requires_grad=True)
    teacher.forward_grad(x).logits.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())
    student = nn.Linear(4, 3)
    assert set(student.state_dict()) == {"weight", "bias"}


def test_teacher_gets_no_gradient_during_training(tmp_path):
    r = tiny_recipe(tmp_path, schedule={"epochs": 1})
    from kdlab.engine.trainer import Trainer

    seen = {}

    class Spy:
        def on_step_end(self, trainer: Trainer, state):
            t = trainer.teachers[0].model
            seen["grads"] = [p.grad for p in t.parameters()]
            seen["training"] = t.training

    run_recipe(r, callbacks=[Spy()], quiet=True)
    assert all(g is None for g in seen["grads"]) and seen["training"] is False


def test_capture_wrong_path_lists_nearest_names():
    model = nn.Sequential()
    model.add_module("layer1", nn.Linear(2, 2))
    model.add_module("layer2", nn.Linear(2, 2))
    with pytest.raises(KDLabError, match="nearest: layer2, layer1"):
        Capture(model, ["layer3"])
    shapes = probe_shapes(model, ["layer1", "layer2:in"], (2,))
    assert shapes["layer1"] == (2,) and shapes["layer2:in"] == (2,) and shapes["logits"] == (2,)


def test_kd_without_teacher_is_a_clear_error(tmp_path):
    r = tiny_recipe(tmp_path, teacher=None)
    with pytest.raises(KDLabError, match="need a teacher"):
        run_recipe(r, quiet=True)


def test_validation_split_selects_the_best_epoch(tmp_path):
    r = tiny_recipe(tmp_path, data={"name": "digits", "batch_size": 128, "val_fraction": 0.2})
    s = run_recipe(r, quiet=True)
    lines = [json.loads(x) for x in (tmp_path / "kd" / "seed3" / "metrics.jsonl").read_text().splitlines()]
    assert all("val/top1" in rec for rec in lines)
    assert s["best"]["selected_by"] == "val/top1"
    assert s["best"]["val/top1"] == max(rec["val/top1"] for rec in lines)
    from kdlab.engine.run import build_data

    ds = build_data(r)
    assert len(ds.val) == round(0.2 * 1297) and len(ds.train) + len(ds.val) == 1297 and len(ds.test) == 500


def test_export_rebuilds_the_bare_student(tmp_path):
    from kdlab.export import export_run, load_exported

    run_recipe(tiny_recipe(tmp_path, schedule={"epochs": 1}), quiet=True)
    d = tmp_path / "kd" / "seed3"
    out = export_run(d, tmp_path / "s.safetensors")
    model = load_exported(out)
    x = torch.randn(4, 1, 8, 8)
    from kdlab.engine.run import build_data, build_model_for

    r = load_recipe(d / "recipe.yaml")
    ref = build_model_for(r.student, build_data(r))
    ref.load_state_dict(load_file(str(d / "student.safetensors")))
    assert torch.equal(model(x), ref.eval()(x))


def test_a_run_that_failed_at_start_up_can_be_rerun_with_a_fixed_recipe(tmp_path):
    bad = tiny_recipe(tmp_path, objective={"ce": {}, "at": {"layers": ["@stage9"]}})
    with pytest.raises(KDLabError, match="no tap alias '@stage9'"):
        run_recipe(bad, quiet=True)
    good = tiny_recipe(tmp_path, schedule={"epochs": 1})
    assert run_recipe(good, quiet=True)["status"] == "finished"


def test_alias_with_a_submodule_suffix():
    from kdlab.capture import resolve_alias
    from kdlab.models import build_model

    m = build_model("resnet8", num_classes=10, input_shape=(3, 32, 32))
    assert resolve_alias(m, "@last.0.conv1") == "layer3.0.conv1"
    assert probe_shapes(m, ["@last.0.conv1"], (3, 32, 32))["@last.0.conv1"] == (64, 8, 8)
