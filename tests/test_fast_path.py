"""GPU fast-path options that can be checked on the CPU: the ``train.compile`` block reaches torch.compile for
the students and the live teacher, and DDP's find_unused_parameters is decided per stage."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdlab.engine import distributed as dist
from kdlab.engine import run_recipe
from kdlab.engine.stages import Stage
from kdlab.engine.trainer import Trainer
from kdlab.errors import KDLabError
from kdlab.recipe import CompileSpec, load_recipe


def recipe(out, **train):
    return load_recipe(
        {
            "name": "fp",
            "out": str(out),
            "seed": 0,
            "data": {"name": "digits", "batch_size": 256},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
            "objective": {"kd": {}},
            "schedule": {"epochs": 1},
            "train": {"tensorboard": False, "progress": False, **train},
        }
    )


@pytest.mark.parametrize(
    "spec,mode,teacher",
    [
        (True, None, True),
        ({"cuda_graphs": True}, "reduce-overhead", True),
        ({"mode": "max-autotune", "teacher": False}, "max-autotune", False),
    ],
)
def test_compile_block_reaches_students_and_teacher(tmp_path, monkeypatch, spec, mode, teacher):
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    run_recipe(recipe(tmp_path, compile=spec), quiet=True)
    assert calls[0] == ("SmallCNN", {"mode": mode, "fullgraph": False})  # the student
    assert len(calls) == (2 if teacher else 1)  # and the live teacher unless teacher: false


def test_compile_block_is_validated():
    with pytest.raises(KDLabError, match="mode"):
        load_recipe(
            {
                "name": "x",
                "data": {"name": "digits"},
                "student": {"name": "smallcnn"},
                "objective": {"ce": {}},
                "train": {"compile": {"mode": "fastest"}},
            }
        )
    assert CompileSpec().mode == "default"


@pytest.mark.parametrize(
    "trainable,views,connector,forced,expect",
    [
        (None, [], False, None, False),  # plain logit KD: every parameter gets a gradient every step
        (["fc"], [], False, None, True),  # a stage training a subset
        (None, [("mix", object())], False, None, True),  # extra views
        (None, [], True, None, True),  # trainable connectors
        (None, [], True, False, False),  # train.find_unused wins
    ],
)
def test_find_unused_is_decided_per_stage(monkeypatch, trainable, views, connector, forced, expect):
    seen = {}
    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(dist, "wrap", lambda module, device, find_unused: seen.setdefault("fu", find_unused))
    objectives = nn.ModuleList([nn.Linear(2, 2) if connector else nn.Identity()])
    fake = SimpleNamespace(
        fsdp=False,
        views=views,
        students=nn.ModuleList([nn.Linear(2, 2)]),
        device=torch.device("cpu"),
        recipe=SimpleNamespace(train=SimpleNamespace(find_unused=forced)),
    )
    stage = Stage("main", {}, None, None, trainable)
    Trainer._step_module(fake, stage, objectives)
    assert seen["fu"] is expect


def test_ddp_unused_parameter_error_is_one_line():
    from kdlab.engine.trainer import _ddp_step

    def ddp(*a, **k):  # the message DDP raises at the step after one that left a parameter without a gradient
        raise RuntimeError(
            "Expected to have finished reduction in the prior iteration before starting a new one. "
            "This error indicates that your module has parameters that were not used in producing "
            "loss.\nYou can enable unused parameter detection by ..."
        )

    with pytest.raises(KDLabError, match=r"^DistributedDataParallel: .* set train.find_unused: true$"):
        _ddp_step(ddp, None, [], {})
    with pytest.raises(RuntimeError, match="other"):
        _ddp_step(lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")), None, [], {})
