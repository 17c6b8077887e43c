"""One name per concept: the helpers that replaced duplicated logic (seed lists, optimiser names, model building)."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe
from kdlab.seeds import parse_seeds


@pytest.mark.parametrize(
    "value, seeds",
    [
        (3, [0, 1, 2]),
        ("0-2", [0, 1, 2]),
        (" 2 - 4 ", [2, 3, 4]),
        ("1,5,7", [1, 5, 7]),
        ("3", [3]),
        ([4, 9], [4, 9]),
    ],
)
def test_seed_lists(value, seeds):
    assert parse_seeds(value) == seeds


@pytest.mark.parametrize("value", [True, 0, "a-b", "1,x"])
def test_bad_seed_lists_say_what_is_allowed(value):
    with pytest.raises(ValueError, match="seed"):
        parse_seeds(value)


def test_cli_and_studies_read_seeds_alike():
    import argparse

    from kdlab.cli import _seeds
    from kdlab.study import load_study

    for text in ["0-3", "2,5", "7"]:
        study, _ = load_study({"out": "x", "methods": {"ce": []}, "seeds": text})
        assert _seeds(text) == study.seeds == parse_seeds(text)
    with pytest.raises(argparse.ArgumentTypeError, match="0,1,2 or 0-4"):
        _seeds("zero")


def test_optimiser_and_schedule_names_come_from_the_engine_tables(monkeypatch):
    from kdlab.engine import optim

    with pytest.raises(KDLabError, match=r"optim.name: unknown optimizer 'adam': did you mean 'adamw'"):
        load_recipe({"student": "smallcnn"}, ["optim.name=adam"])
    with pytest.raises(KDLabError, match=r"schedule.name: unknown schedule 'cosin': did you mean 'cosine'"):
        load_recipe({"student": "smallcnn"}, ["schedule.name=cosin"])
    # a builder added to the engine's table is a valid recipe name: there is no second list to update
    monkeypatch.setitem(optim.OPTIMIZERS, "plain_sgd", lambda params, s: torch.optim.SGD(params, lr=s.lr))
    r = load_recipe({"student": "smallcnn"}, ["optim.name=plain_sgd"])
    opt = optim.build_optimizer([torch.nn.Parameter(torch.zeros(2))], r.optim)
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0


def test_export_and_training_build_the_same_network():
    from kdlab.engine.run import build_model_for
    from kdlab.preprocess import build_student

    recipe = load_recipe(
        {"student": {"name": "smallcnn", "kwargs": {"width": 0.25}, "insert": [{"layer": "letkd", "at": "@stage1"}]}}
    )

    class Shape:
        num_classes, input_shape = 10, (1, 8, 8)

    torch.manual_seed(0)
    a = build_model_for(recipe.student, Shape())
    torch.manual_seed(0)
    b = build_student({"student": recipe.student.model_dump(mode="json"), "num_classes": 10, "input_shape": [1, 8, 8]})
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize(
    "view, typo, field", [("crop", "paddin", "padding"), ("flip", "pp", "p"), ("crop_flip", "padd", "padding")]
)
def test_augmentation_views_name_the_field_a_typo_meant(view, typo, field):
    with pytest.raises(KDLabError, match=f"unknown field '{typo}': did you mean '{field}'"):
        load_recipe({"student": "smallcnn", "data": {"name": "digits", "augment": [{"name": view, typo: 1}]}})
