"""Teachers for a recipe: the live frozen module (``load_teacher``: from a run folder, a model + checkpoint, or a
factory) and, when the recipe says ``cache:``, the soft-label cache in front of it.

``cache: auto`` builds the cache on first use (next to the teacher's run folder, or under ``$KDLAB_CACHE`` /
``~/.cache/kdlab/teacher-cache`` for a model/checkpoint teacher) and reuses it; its folder name is a
fingerprint of everything the stored outputs depend on, so a changed augmentation or dataset gets its own.
An explicit ``cache: PATH`` must exist and match (a stale or foreign cache is refused in one line). When the
objective needs teacher features that an ``auto`` cache does not store (``cache.taps``), the live teacher
serves the clean batch instead and a note says so; with an explicit path that is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlab.data.decoded import cache_root
from kdlab.engine.batch import make_pipeline
from kdlab.engine.checkpoint import fit_weights, read_weights
from kdlab.engine.devices import memory_format_for, pick_device, teacher_autocast
from kdlab.engine.lock import folder_lock
from kdlab.errors import KDLabError
from kdlab.recipe import CacheSpec, Recipe, TeacherSpec, load_recipe
from kdlab.runfiles import RECIPE, SUMMARY, WEIGHTS
from kdlab.teachers.cached import CachedTeacher, build, fingerprint, read_meta, short, weights_digest
from kdlab.teachers.live import LiveTeacher


def objective_teacher_taps(recipe: Recipe) -> list[str]:
    """Teacher taps the recipe's terms declare, over every stage."""
    specs = [recipe.objective] + [s.objective for s in recipe.stages or [] if s.objective]
    taps: list[str] = []
    for objective in specs:
        for spec in objective.values():
            taps += [t for t in spec.build().taps().teacher if t not in taps]
    return taps


def cache_home() -> Path:
    """Caches of model/checkpoint teachers: beside the decoded images, under ``$KDLAB_CACHE`` or ~/.cache/kdlab."""
    return cache_root() / "teacher-cache"


def _augment(recipe: Recipe) -> list[dict]:
    return [{"name": v.name, **v.params.model_dump()} for v in recipe.data.augment]


def cache_plan(
    recipe: Recipe, spec: TeacherSpec, dataset: Any, live: LiveTeacher | None, device: torch.device
) -> tuple[Path, dict[str, str]]:
    """(folder, expected fingerprint) of a teacher's cache under this recipe."""
    assert spec.cache is not None
    autocast = teacher_autocast(recipe.train, device)
    fp = fingerprint(
        teacher=weights_digest(live.model) if live is not None else None,
        dataset=dataset,
        augment=_augment(recipe),
        spec=spec.cache,
        autocast=str(autocast),
    )
    if spec.cache.path != "auto":
        return Path(spec.cache.path), fp
    if spec.run is not None:
        return Path(spec.run) / "cache" / short(fp), fp
    return cache_home() / f"{fp['teacher weights'][:12]}-{short(fp)}", fp


def ensure_cache(
    recipe: Recipe,
    spec: TeacherSpec,
    dataset: Any,
    live: LiveTeacher,
    device: torch.device,
    *,
    quiet: bool = True,
    progress: bool | None = None,
) -> tuple[Path, dict[str, str]]:
    """(folder, fingerprint) of the cache, built first if it is missing or unfinished (resumable), under a lock
    so that two processes wanting the same cache build it once. The fingerprint hashes the teacher's weights and
    the training inputs, so callers reuse it rather than computing it again."""
    path, fp = cache_plan(recipe, spec, dataset, live, device)
    meta = read_meta(path)
    if meta is not None and meta.get("complete"):
        return path, fp
    live.to(device, memory_format_for(recipe.train, tuple(dataset.input_shape), device))
    live.autocast = teacher_autocast(recipe.train, device)
    with folder_lock(path, wait=True, what="teacher cache"):
        build(
            path,
            teacher=live,
            dataset=dataset,
            pipeline=make_pipeline(recipe, dataset, device),
            spec=spec.cache,
            fp=fp,
            augment=_augment(recipe),
            batch_size=recipe.data.eval_batch_size,
            device=device,
            show=(lambda *_: None) if quiet else print,
            progress=progress,
        )
    return path, fp


def load_teacher(spec: TeacherSpec, dataset: Any, *, name: str = "teacher", quiet: bool = True) -> LiveTeacher:
    """A frozen teacher from a run folder (trained first from ``spec.recipe`` if it is not finished yet),
    or from a model spec with an optional checkpoint (a factory model brings its own weights)."""
    from kdlab.engine.run import build_model_for, run_recipe  # the driver trains an unfinished teacher run

    if spec.run is not None:
        run = Path(spec.run)
        if not (run / SUMMARY).exists():
            if spec.recipe is None:
                raise KDLabError(
                    f"teacher run {run} has no finished training (no summary.json); "
                    "train it with `kdlab run` or give `teacher.recipe:` to train it here"
                )
            # under the teacher folder's lock: students waiting on one untrained teacher train it once
            with folder_lock(run, wait=True, what="teacher run"):
                if not (run / SUMMARY).exists():
                    run_recipe(load_recipe(spec.recipe), run_dir=run, existing="resume", quiet=quiet, wait=True)
        trec = load_recipe(run / RECIPE)
        model = build_model_for(trec.student, dataset)
        path = run / WEIGHTS[spec.weights]
        try:  # one-line errors: truncated, pickled, wrong width
            fit_weights(model, read_weights(path), path)
        except KDLabError as e:
            raise KDLabError(f"teacher run {run}: {e}; `kdlab run <its recipe> --force` retrains it") from None
    else:
        assert spec.model is not None
        model = build_model_for(spec.model, dataset)
        if spec.checkpoint is not None:
            fit_weights(model, read_weights(spec.checkpoint), f"teacher.checkpoint {spec.checkpoint}")
    return LiveTeacher(model, list(spec.taps), name=name)


def live_teacher(recipe: Recipe, spec: TeacherSpec, dataset: Any, name: str, quiet: bool = True) -> LiveTeacher:
    """The live teacher of ``spec``. A model teacher without a checkpoint is initialised from the recipe's seed
    alone (not from wherever the global RNG stands), so ``kdlab cache build`` and ``kdlab run`` agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 7_919)
        return load_teacher(spec, dataset, name=name, quiet=quiet)


def build_teachers(recipe: Recipe, dataset: Any, device: torch.device, *, quiet: bool = True) -> list[Any]:
    """Every teacher of the recipe as a TeacherSource (live, or a cache with the live module behind it)."""
    out: list[Any] = []
    needed = objective_teacher_taps(recipe) if any(t.cache is not None for t in recipe.teachers) else []
    for spec in recipe.teachers:  # a missing cache folder is said before any teacher trains on demand
        if spec.cache is not None and spec.cache.path != "auto" and read_meta(spec.cache.path) is None:
            raise KDLabError(
                f"teacher.cache: {spec.cache.path} is not a teacher cache (no meta.json); build it with "
                "`kdlab cache build <recipe files>` or use cache: auto"
            )
    for i, spec in enumerate(recipe.teachers):
        name = f"teacher{i}"
        live = live_teacher(recipe, spec, dataset, name) if (spec.run is not None or spec.model is not None) else None
        if spec.cache is None:
            out.append(live)
            continue
        missing = [t for t in needed if t not in spec.cache.taps]
        if missing and spec.cache.path == "auto" and live is not None:
            if not quiet:
                print(
                    f"note: teacher cache not used for {name}: the objective needs teacher features at {missing}, "
                    "which it does not store (declare them in teacher.cache.taps to cache them)"
                )
            out.append(live)
            continue
        if spec.cache.path == "auto":
            assert live is not None
            path, expected = ensure_cache(recipe, spec, dataset, live, device, quiet=quiet)
        else:
            path, expected = cache_plan(recipe, spec, dataset, live, device)
        out.append(
            CachedTeacher(path, live=live, placement=spec.cache.placement, device=device, name=name, expected=expected)
        )
    return out


def build_for_recipe(recipe: Recipe, *, teacher: int = 0, out: str | None = None, progress: bool | None = None) -> Path:
    """``kdlab cache build``: the cache of the recipe's teacher ``teacher`` (its ``cache:`` block, or the
    defaults), at ``out`` or where ``cache: auto`` would put it."""
    from kdlab.engine.run import build_data, set_threads  # deferred: the driver imports this module

    if not recipe.teachers:
        raise KDLabError("kdlab cache build: the recipe has no `teacher:`")
    if not 0 <= teacher < len(recipe.teachers):
        raise KDLabError(f"--teacher {teacher}: the recipe has {len(recipe.teachers)} teacher(s)")
    spec = recipe.teachers[teacher]
    if spec.run is None and spec.model is None:
        raise KDLabError("kdlab cache build needs the teacher's `run:` or `model:` to run it")
    cache = spec.cache or CacheSpec()
    if out is not None:
        cache = cache.model_copy(update={"path": str(out)})
    spec = spec.model_copy(update={"cache": cache})
    set_threads(recipe.train.threads)
    device = pick_device(recipe.train.device)
    dataset = build_data(recipe)
    live = live_teacher(recipe, spec, dataset, f"teacher{teacher}", quiet=False)
    return ensure_cache(recipe, spec, dataset, live, device, quiet=False, progress=progress)[0]


def prebuild_caches(recipes: list[Recipe], log: Any = print) -> dict[int, str]:
    """Build, once each, the ``cache: auto`` caches that these runs will read (before parallel workers start,
    so they only read). Skips explicit caches and runs whose feature terms the cache would not serve.
    Returns {index of a recipe whose cache failed: the error}."""
    import json

    seen: set[str] = set()
    failed: dict[int, str] = {}
    for i, recipe in enumerate(recipes):
        if not recipe.teachers or recipe.teachers[0].cache is None:
            continue
        spec = recipe.teachers[0]
        assert spec.cache is not None
        if spec.cache.path != "auto" or any(t not in spec.cache.taps for t in objective_teacher_taps(recipe)):
            continue  # an explicit cache is the user's; feature terms without stored taps use the live teacher
        key = json.dumps(
            [
                spec.model_dump(),
                recipe.data.model_dump(),
                recipe.seed if spec.run is None else None,
                recipe.train.device,
            ],
            sort_keys=True,
            default=str,
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            path = build_for_recipe(recipe, progress=False)
        except KDLabError as e:
            failed[i] = str(e)
            log(f"FAILED teacher cache for {recipe.name} seed {recipe.seed}: {e}")
            continue
        log(f"teacher cache ready: {path}")
    return failed
