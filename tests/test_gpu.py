"""CUDA-only checks (marker ``cuda``; skipped without a CUDA device; benchmarks/gpu/check.sh runs them on a GPU):
no host synchronisation inside a KD step as CUDA itself sees it, the per-device defaults, compiled and
CUDA-graph steps, and seeds together on one device."""

import json

import pytest
import torch

from kdlab.engine import run_recipe
from kdlab.recipe import load_recipe

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def recipe(out, teacher="live", **train):
    t = {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}}
    if teacher == "cached":
        t["cache"] = {"views": 2}
    return load_recipe(
        {
            "name": f"gpu-{teacher}",
            "out": str(out),
            "seed": 0,
            "data": {
                "name": "digits",
                "batch_size": 64,
                "drop_last": True,
                "augment": [{"name": "crop", "padding": 1}],
            },
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "teacher": t,
            "objective": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "tau": 4}},
            "schedule": {"epochs": 2},
            "train": {"device": "cuda", "tensorboard": False, "progress": False, **train},
        }
    )


class SyncErrors:
    """CUDA's own sync detector raises on any blocking host-device synchronisation from the end of step 1 to
    the end of step 15 of every epoch (20 steps; the last step is the logging point)."""

    def on_step_end(self, trainer, state):
        if state["step"] == 1:
            torch.cuda.set_sync_debug_mode("error")
        elif state["step"] == 15:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("teacher", ["live", "cached"])
def test_no_host_sync_inside_kd_steps_on_cuda(tmp_path, teacher):
    try:
        s = run_recipe(recipe(tmp_path, teacher), callbacks=[SyncErrors()], quiet=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert s["status"] == "finished"


def test_cuda_defaults_are_bf16_and_channels_last():
    from kdlab.engine.devices import memory_format_for, precision_for
    from kdlab.recipe import TrainSpec

    dev = torch.device("cuda")
    assert precision_for(TrainSpec(), dev) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert memory_format_for(TrainSpec(), (3, 32, 32), dev) == torch.channels_last


@pytest.mark.parametrize("compile", [True, {"cuda_graphs": True}])
def test_compiled_steps_train(tmp_path, compile):
    s = run_recipe(recipe(tmp_path, compile=compile), quiet=True)
    lines = [json.loads(x) for x in (tmp_path / "gpu-live" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert s["status"] == "finished" and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in lines)
    assert torch.backends.cudnn.benchmark


def test_seeds_together_on_one_gpu(tmp_path):
    from kdlab.engine.together import run_together

    recipes = [recipe(tmp_path, precision="fp32").model_copy(update={"seed": s}) for s in (0, 1)]
    out = run_together(recipes, quiet=True)
    assert [r["status"] for r in out] == ["finished", "finished"]
    alone = run_recipe(recipes[0].model_copy(update={"out": str(tmp_path / "alone")}), quiet=True)
    assert alone["final"]["test/top1"] == pytest.approx(
        out[0]["final"]["test/top1"], abs=0.05
    )  # GPU kernels: not bitwise
