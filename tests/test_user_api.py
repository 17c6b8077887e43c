"""`kdlab.distill`: in-memory teacher, student and data through the same engine and run folder."""

import json

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import kdlab
from kdlab.errors import KDLabError


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _mlp(hidden, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_distill_trains_the_given_student_through_a_run_folder(tmp_path, capsys):
    teacher, student = _mlp(32, 0), _mlp(8, 1)
    train, (xt, yt) = _data(240, 0), _data(120, 1)
    before = [p.detach().clone() for p in student.parameters()]
    out, summary = kdlab.distill(
        teacher,
        student,
        train=train,
        test=TensorDataset(xt, yt),
        method="kd",
        epochs=2,
        out=str(tmp_path),
        optim={"lr": 0.1},
        **{"train.tensorboard": False},
    )
    assert out is student and not out.training and summary["status"] == "finished"
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    with torch.no_grad():  # inputs reach the student as given (no normalisation by default)
        acc = (student(xt).argmax(1) == yt).float().mean().item()
    assert acc == pytest.approx(summary["final"]["test/top1"], abs=1e-6)
    run = tmp_path / "kd" / "seed0"
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["data"]["name"].startswith("inmemory.data-") and saved["objective"]["kd"]["tau"] == 4.0
    assert json.loads((run / "summary.json").read_text())["final"] == summary["final"]

    # the same call again (a notebook re-run, or a new process) returns the finished run and its weights
    again, summary2 = kdlab.distill(
        teacher,
        _mlp(8, 5),
        train=train,
        test=(xt, yt),
        method="kd",
        epochs=2,
        out=str(tmp_path),
        optim={"lr": 0.1},
        **{"train.tensorboard": False},
    )
    assert summary2["final"] == summary["final"]
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), student.parameters()))
    from kdlab.cli import main
    from kdlab.registry import DATASETS

    DATASETS._entries.pop(saved["data"]["name"])  # as in a new process: the CLI cannot rebuild in-memory data
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 2
    assert "resume from Python" in capsys.readouterr().err
    DATASETS.add(saved["data"]["name"], lambda: None, replace=True)
    with pytest.raises(KDLabError, match="holds another run"):  # other data never reuses that run
        kdlab.distill(
            teacher,
            _mlp(8, 1),
            train=_data(240, 7),
            test=(xt, yt),
            method="kd",
            epochs=2,
            out=str(tmp_path),
            optim={"lr": 0.1},
            **{"train.tensorboard": False},
        )


def test_plain_training_without_a_teacher_and_a_held_out_fraction(tmp_path):
    student, summary = kdlab.distill(
        None, _mlp(8, 2), train=_data(100, 3), method="ce", epochs=1, out=str(tmp_path), **{"train.tensorboard": False}
    )
    saved = yaml.safe_load((tmp_path / "ce" / "seed0" / "recipe.yaml").read_text())
    assert saved["teacher"] is None and summary["status"] == "finished"
    with pytest.raises(KDLabError, match="needs a teacher"):
        kdlab.distill(None, _mlp(8, 2), train=_data(100, 3), method="kd", epochs=1, out=str(tmp_path))
