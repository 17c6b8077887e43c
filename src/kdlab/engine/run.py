"""From a recipe to a finished run folder: build data, models and teachers, train, write the summary.

Run folder: ``recipe.yaml`` (resolved), ``env.json`` (versions, git commit, device, command),
``metrics.jsonl``, ``tb/``, ``checkpoint.safetensors`` (resume point), ``best.safetensors`` and
``student.safetensors`` (bare student weights), ``summary.json`` (final and best metrics).

Under ``torchrun`` (``WORLD_SIZE > 1``) ``run_recipe`` initialises the process group
(``kdlab.engine.distributed.setup``), every rank decides what to do with an existing folder from the same
files, rank 0 alone prepares and writes the folder, and every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

import kdlab
from kdlab.build import build_network
from kdlab.data import build_dataset
from kdlab.data.builtin import stratified_subset
from kdlab.data.checks import check_dataset
from kdlab.data.corrupt import corrupt
from kdlab.engine import distributed as dist
from kdlab.engine.checkpoint import atomic_write, read_json, remove_stale_tmp
from kdlab.engine.devices import pick_device
from kdlab.engine.lock import folder_lock
from kdlab.engine.trainer import Trainer, load_checkpoint
from kdlab.errors import KDLabError
from kdlab.preprocess import write_for_run
from kdlab.recipe import ModelSpec, Recipe, load_recipe
from kdlab.runfiles import CHECKPOINT, ENV, RECIPE, SUMMARY
from kdlab.teachers.load import build_teachers, load_teacher  # noqa: F401  (kdlab.engine.run.load_teacher stays a name)

Existing = Literal["resume", "error", "overwrite", "skip"]


def set_threads(threads: int | None) -> None:
    """CPU threads: the recipe's value, else $KDLAB_THREADS, else torch's default (one per core)."""
    n = threads or int(os.environ.get("KDLAB_THREADS", "0") or 0)
    if n:
        torch.set_num_threads(n)


def build_model_for(spec: ModelSpec, dataset: Any) -> torch.nn.Module:
    """The network ``spec`` names, sized for ``dataset`` (see :func:`kdlab.build.build_network`)."""
    return build_network(spec, dataset.num_classes, dataset.input_shape)


def build_data(recipe: Recipe, run_dir: Path | None = None) -> Any:
    """The dataset a run trains on: corruption of the training split (recorded in ``corruption.json``),
    then the validation carve-out. The test split is never touched."""
    import dataclasses

    d = recipe.data
    dataset = build_dataset(d.name, **d.kwargs)
    if d.corruption is not None:
        seed = d.corruption.seed if d.corruption.seed is not None else recipe.seed
        train, record = corrupt(
            dataset.train, dataset.num_classes, d.corruption, seed, class_names=dataset.classes or None
        )
        dataset = dataclasses.replace(dataset, train=train)
        if run_dir is not None:
            _write_text(run_dir / "corruption.json", json.dumps(_jsonable(record)))
    if d.val_fraction > 0:
        n_val = max(1, round(d.val_fraction * len(dataset.train)))
        val_idx = stratified_subset(dataset.train.y, n_val, d.split_seed)
        mask = torch.ones(len(dataset.train), dtype=torch.bool)
        mask[val_idx] = False
        dataset = dataclasses.replace(
            dataset, train=dataset.train.subset(mask.nonzero().squeeze(1)), val=dataset.train.subset(val_idx)
        )

    check_dataset(dataset, batch_size=d.batch_size, drop_last=d.drop_last, world=dist.world())  # before any step
    return dataset


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def provenance(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "kdlab": kdlab.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            env["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5)
            env["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_recipe(
    recipe: Recipe,
    *,
    run_dir: str | Path | None = None,
    existing: Existing = "resume",
    callbacks: Sequence[Any] = (),
    quiet: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Train one recipe (one seed) into its run folder and return the summary.

    ``existing`` says what to do with a folder that already holds a run of this recipe: resume it (and
    return a finished one as is), skip (return it only if finished), overwrite it, or raise. The folder is
    locked for the whole run (``engine/lock.py``): a folder in use by another process raises a one-line
    error naming it, or with ``wait=True`` waits for it (then usually finds the run finished).
    """
    run_dir = Path(run_dir) if run_dir is not None else recipe.run_dir()
    kwargs = dict(run_dir=run_dir, existing=existing, callbacks=callbacks, quiet=quiet)
    if dist.requested() and int(os.environ.get("RANK", "0") or 0) != 0:
        return _run_locked(recipe, **kwargs)  # rank 0 holds the folder's lock for the whole group
    hint = (
        "--force does not stop a live run: wait for it to finish or stop it first"
        if existing == "overwrite"
        else "wait for it to finish, or pass --wait to queue behind it"
    )
    with folder_lock(run_dir, wait=wait, hint=hint):
        return _run_locked(recipe, **kwargs)


def _run_locked(
    recipe: Recipe, *, run_dir: Path, existing: Existing, callbacks: Sequence[Any], quiet: bool
) -> dict[str, Any]:
    """``run_recipe``'s body, called with the run folder's lock held."""
    summary_path = run_dir / SUMMARY
    # torchrun (WORLD_SIZE > 1): the process group first, so that the ranks can wait for each other
    device = dist.setup(pick_device(recipe.train.device)) if dist.requested() else None
    main = dist.is_main()
    wipe = False  # every rank decides from the same files; only rank 0 deletes or writes
    if run_dir.exists() and any(run_dir.iterdir()):
        saved = run_dir / RECIPE
        if existing == "overwrite":
            wipe = True
        elif existing == "error":
            raise KDLabError(
                f"run folder {run_dir} exists; resume it with `kdlab run --resume {run_dir}` or pass --force"
            )
        elif saved.exists() and _saved_recipe(saved) != recipe.to_dict():
            if (run_dir / CHECKPOINT).exists():
                raise KDLabError(
                    f"run folder {run_dir} holds a different recipe; choose another `out`/`name` or pass --force"
                )
            wipe = True  # it never finished an epoch (e.g. a recipe error at start-up): nothing to keep
        elif summary_path.exists():
            summary = read_json(summary_path, "--force restarts the run")
            if summary.get("status") == "finished":
                return summary
    dist.barrier()  # every rank has decided before rank 0 changes the folder
    if main:
        if wipe:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(run_dir)  # half-written files of a killed run (we hold the folder's lock)
        # first, so that a run killed at any later point can be resumed with `kdlab run --resume`
        _write_text(run_dir / RECIPE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    dist.barrier()
    resume = load_checkpoint(run_dir) if (run_dir / CHECKPOINT).exists() else None  # the same on every rank

    set_threads(recipe.train.threads)
    if device is None:
        device = pick_device(recipe.train.device)
    dataset = build_data(recipe, run_dir if main else None)
    if main:
        write_for_run(run_dir, recipe, dataset)  # what predict/eval/export need, so they never reload the data
        env_path = run_dir / ENV
        env = json.loads(env_path.read_text()) if env_path.exists() else {"runs": []}
        env["runs"].append(
            {
                **provenance(device),
                "resumed_from_epoch": resume["global_epoch"] if resume else None,
                **({"world_size": dist.world()} if dist.world() > 1 else {}),
            }
        )
        _write_text(env_path, json.dumps(env, indent=2))

    torch.manual_seed(recipe.seed)  # model initialisation is a function of the seed
    students = [build_model_for(s, dataset) for s in [recipe.student, *recipe.cohort]]
    teachers = build_teachers(recipe, dataset, device, quiet=quiet)
    trainer = Trainer(recipe, run_dir, dataset, students, teachers, device, callbacks=callbacks)
    summary = trainer.fit(resume=resume)
    summary["run_dir"] = str(run_dir)
    if not main:  # rank 0 writes the summary; return once it is on disk
        dist.barrier()
        return summary
    _write_text(summary_path, json.dumps(summary, indent=2))
    dist.barrier()
    if not quiet:
        f, b = summary["final"], summary["best"]
        print(
            f"{recipe.name} seed {recipe.seed}: top-1 last {100 * f.get('test/top1', float('nan')):.2f} "
            f"best {100 * b.get('test/top1', float('nan')):.2f} ({summary['wall_s']:.1f} s) -> {run_dir}"
        )
    return summary


def _saved_recipe(path: Path) -> dict[str, Any]:
    try:
        return load_recipe(path).to_dict()
    except KDLabError as e:
        raise KDLabError(f"{e}; the run folder's saved recipe is unreadable: `--force` restarts the run") from None


def resume_run(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE).exists():
        raise KDLabError(
            f"{run_dir} is not a kdlab run folder (no recipe.yaml); rerun its recipe with `kdlab run` "
            "(it continues in the same folder)"
        )
    return run_recipe(load_recipe(run_dir / RECIPE), run_dir=run_dir, existing="resume", **kwargs)
