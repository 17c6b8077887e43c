"""kdlab run --seeds ... --together: seeds interleaved step by step in one process write exactly the run
folders that separate runs write (bitwise weights, the same metrics), with dropout and augmentation drawing
from the global and per-epoch random streams."""

import json

import torch
from safetensors.torch import load_file

from kdlab.cli import main
from kdlab.engine import run_recipe
from kdlab.engine.together import Baton, run_together
from kdlab.recipe import load_recipe

SEEDS = (0, 1, 2)


def recipe(out, seed):
    return load_recipe(
        {
            "name": "tg",
            "out": str(out),
            "seed": seed,
            "data": {"name": "digits", "batch_size": 128, "augment": [{"name": "crop", "padding": 1}]},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25, "dropout": 0.3}},
            "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
            "objective": {"ce": {"weight": 0.1}, "kd": {}},
            "schedule": {"epochs": 2},
            "train": {"tensorboard": False, "progress": False},
        }
    )


def folder(out, seed):
    d = out / "tg" / f"seed{seed}"
    lines = [
        {k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
        for x in (d / "metrics.jsonl").read_text().splitlines()
    ]
    return load_file(str(d / "student.safetensors")), lines


class Order:
    def __init__(self, log, seed):
        self.log, self.seed = log, seed

    def on_step_end(self, trainer, state):
        self.log.append((trainer.recipe.seed, state["global_epoch"], state["step"]))


def test_seeds_together_equal_separate_runs_bitwise(tmp_path):
    for s in SEEDS:
        run_recipe(recipe(tmp_path / "alone", s), quiet=True)
    log = []
    out = run_together([recipe(tmp_path / "together", s) for s in SEEDS], callbacks=[Order(log, None)], quiet=True)
    assert [r["seed"] for r in out] == list(SEEDS) and all(r["status"] == "finished" for r in out)
    assert [seed for seed, _, _ in log[:6]] == [0, 1, 2, 0, 1, 2]  # really interleaved, one step each
    for s in SEEDS:
        wa, la = folder(tmp_path / "alone", s)
        wt, lt = folder(tmp_path / "together", s)
        assert wa.keys() == wt.keys() and all(torch.equal(wa[k], wt[k]) for k in wa), s
        assert la == lt
    w0, _ = folder(tmp_path / "alone", 0)
    w1, _ = folder(tmp_path / "alone", 1)
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)  # the seeds differ


def test_a_failing_seed_stops_alone_and_is_raised(tmp_path):
    class Boom:
        def on_step_end(self, trainer, state):
            if trainer.recipe.seed == 1 and state["step"] == 2:
                raise RuntimeError("seed 1 broke")

    import pytest

    with pytest.raises(RuntimeError, match="seed 1 broke"):
        run_together([recipe(tmp_path, s) for s in (0, 1)], callbacks=[Boom()], quiet=True)
    assert (tmp_path / "tg" / "seed0" / "summary.json").exists()  # the other seed finished


def test_baton_hands_turns_round_robin():
    b = Baton(3)
    b.leave(1)
    assert b.turn == 2 and b._next(2) == 0 and b._next(0) == 2


def test_cli_together_flag(tmp_path, capsys):
    import yaml

    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(recipe(tmp_path / "cli", 0).to_dict()))
    assert main(["run", str(r), "--seeds", "0-1", "--together"]) == 0
    for s in (0, 1):
        assert json.loads((tmp_path / "cli" / "tg" / f"seed{s}" / "summary.json").read_text())["status"] == "finished"
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["tg seed 0", "tg seed 1"]
