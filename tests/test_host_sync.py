"""No host synchronisation inside a training step: between two logging points the KD path never reads a
tensor back (``item``, ``float``, ``int``, ``bool``, ``tolist``, ``cpu``, ``numpy``), with a live teacher and
with a soft-label cache. On the CPU those calls cost nothing, so they are counted by patching ``torch.Tensor``;
on a GPU they would each block the host until the device drains its queue (tests/test_gpu.py asks CUDA itself)."""

import traceback

import pytest
import torch

from kdlab.engine import run_recipe
from kdlab.recipe import load_recipe

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class SyncCounter:
    """Patches the tensor read-back methods while ``on`` and records where each call came from."""

    def __init__(self, monkeypatch):
        self.on, self.calls = False, []
        for name in READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def counted(t, *args, **kwargs):
            if self.on:
                where = traceback.extract_stack(limit=4)[-2]
                self.calls.append(f"{name} at {where.filename.rsplit('/', 2)[-1]}:{where.lineno}")
            return real(t, *args, **kwargs)

        return counted


class Window:
    """Count from the end of step ``start`` to the end of step ``stop`` of the first epoch: whole steps, no
    logging point in between (the loss sums are read at the epoch's last step)."""

    def __init__(self, counter, start, stop):
        self.counter, self.start, self.stop, self.steps = counter, start, stop, 0

    def on_step_end(self, trainer, state):
        if state["global_epoch"] != 0:
            return
        if state["step"] == self.start:
            self.counter.on = True
        elif state["step"] == self.stop:
            self.counter.on = False
            self.steps = self.stop - self.start


@pytest.mark.parametrize("teacher", ["live", "cached"])
def test_kd_steps_read_nothing_back_between_logging_points(tmp_path, monkeypatch, teacher):
    t = {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}}
    if teacher == "cached":
        t["cache"] = {"views": 2}  # built on first use under $KDLAB_CACHE (a temporary folder in the tests)
    recipe = load_recipe(
        {
            "name": "sync",
            "out": str(tmp_path),
            "seed": 0,
            "data": {"name": "digits", "batch_size": 64, "augment": [{"name": "crop", "padding": 1}]},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "teacher": t,
            "objective": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "tau": 4}},
            "schedule": {"epochs": 1},
            "train": {"tensorboard": False, "progress": False, "grad_clip": 5.0},
        }
    )
    counter = SyncCounter(monkeypatch)
    counter.on = True  # the patch sees reads
    float(torch.ones(()) * 2), torch.ones(2).tolist()
    assert len(counter.calls) == 2
    counter.on, counter.calls = False, []
    window = Window(counter, 1, 15)  # 20 steps per epoch (1297 / 64): the last one is a logging point
    s = run_recipe(recipe, callbacks=[window], quiet=True)
    assert window.steps == 14 and s["status"] == "finished"
    assert counter.calls == [], counter.calls[:10]
    assert "test/top1" in s["final"]
