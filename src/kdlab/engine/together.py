"""Several seeds of a recipe in one process, sharing one device (``kdlab run --seeds 0-2 --together``).

A small student cannot keep a large GPU busy: each step is a few hundred tiny kernels, so the device idles
while Python launches them. Running the seeds side by side fills it. Each seed is an ordinary ``run_recipe``
in its own thread, and the threads take turns one training step at a time (a baton passed at every step end,
so exactly one thread runs at any moment). At each hand-over the global random states (torch, CUDA, NumPy,
``random``) are saved for the thread that stops and restored for the one that resumes, so every seed draws
exactly the numbers it would draw alone and its run folder is exactly what a single run writes (on the CPU
bitwise: tests/test_together.py). On CUDA each thread queues its kernels on its own stream, and the step does
no host synchronisation, so one seed's kernels run while the next seed's are being launched.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kdlab.engine.devices import pick_device
from kdlab.engine.run import run_recipe
from kdlab.recipe import Recipe


def _rng() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_rng(state: tuple[Any, ...]) -> None:
    cpu, cuda, np_state, py_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(np_state)
    random.setstate(py_state)


class Baton:
    """Turns between ``n`` threads: ``take(i)`` waits for thread i's turn, ``pass_on(i)`` hands the turn to
    the next live thread (with the random states swapped), ``leave(i)`` retires thread i."""

    def __init__(self, n: int):
        self.cond = threading.Condition()
        self.turn, self.live = 0, [True] * n
        self.states: list[tuple[Any, ...] | None] = [None] * n

    def _next(self, i: int) -> int:
        n = len(self.live)
        for k in range(1, n + 1):
            if self.live[(i + k) % n]:
                return (i + k) % n
        return i

    def take(self, i: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i)
        if self.states[i] is not None:
            _set_rng(self.states[i])

    def pass_on(self, i: int) -> None:
        self.states[i] = _rng()
        with self.cond:
            self.turn = self._next(i)
            self.cond.notify_all()
        self.take(i)

    def leave(self, i: int) -> None:
        with self.cond:
            self.live[i] = False
            self.turn = self._next(i)
            self.cond.notify_all()


class _Turns:
    """The callback that hands the baton on after every training step of its seed."""

    def __init__(self, baton: Baton, i: int):
        self.baton, self.i = baton, i

    def on_step_end(self, trainer: Any, state: dict[str, Any]) -> None:
        self.baton.pass_on(self.i)


def run_together(recipes: Sequence[Recipe], *, callbacks: Sequence[Any] = (), **kwargs: Any) -> list[dict[str, Any]]:
    """``run_recipe`` for every recipe (typically one per seed), interleaved step by step in one process.
    Returns the summaries in order; the first error of any seed is raised once every seed has stopped."""
    baton = Baton(len(recipes))
    results: list[Any] = [None] * len(recipes)
    errors: list[BaseException | None] = [None] * len(recipes)

    def work(i: int, recipe: Recipe) -> None:
        baton.take(i)
        try:
            dev = pick_device(recipe.train.device)
            stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                results[i] = run_recipe(recipe, callbacks=[*callbacks, _Turns(baton, i)], **kwargs)
            if stream is not None:
                stream.synchronize()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors[i] = e
        finally:
            baton.leave(i)

    threads = [threading.Thread(target=work, args=(i, r), name=f"kdlab-seed{r.seed}") for i, r in enumerate(recipes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        if e is not None:
            raise e
    return results
