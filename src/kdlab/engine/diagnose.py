"""Teacher-only diagnostics of a recipe's data augmentation.

T. stddev (Wang et al., NeurIPS 2022, "What makes a good data augmentation in KD"): with everything frozen,
run the teacher over the training set with the recipe's views for a few epochs; every ``group`` batches
average the teacher's probability vectors of the samples seen in that group (clean and augmented); the
score is the mean over classes of the standard deviation of these group means. Lower is claimed to predict
a lower student test loss. We also report it per source (clean batch only, each extra view only).

A view that scores candidates with the student (CutMixPick by ``student_entropy`` or ``kl``: its
``uses_student``) needs the trained student the authors load: ``student=`` a run folder (its final
``student.safetensors``) or a weights file; without it the diagnosis is refused, since a freshly initialised
student would pick by noise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.engine.checkpoint import fit_weights, read_weights
from kdlab.engine.run import build_data, build_model_for, load_teacher, pick_device, set_threads
from kdlab.engine.stages import epoch_seed
from kdlab.engine.trainer import Trainer
from kdlab.errors import KDLabError
from kdlab.recipe import Recipe
from kdlab.runfiles import FINAL_WEIGHTS
from kdlab.views.extra import ViewInput


def load_student_weights(student: nn.Module, source: str | Path) -> None:
    """Trained weights into ``student``: a run folder (its final ``student.safetensors``) or a weights file."""
    path = Path(source)
    if path.is_dir():
        path = path / FINAL_WEIGHTS
        if not path.exists():
            raise KDLabError(
                f"--student {source}: no student.safetensors in that folder; give a finished run "
                "folder or a weights file"
            )
    elif not path.exists():
        raise KDLabError(f"--student {source}: no such run folder or weights file")
    fit_weights(student, read_weights(path), f"--student {source}")


@torch.no_grad()
def t_stddev(recipe: Recipe, *, epochs: int = 10, group: int = 5, student: str | Path | None = None) -> dict[str, Any]:
    if not recipe.teachers:
        raise KDLabError("T. stddev needs a teacher: add `teacher:` to the recipe")
    set_threads(recipe.train.threads)
    device = pick_device(recipe.train.device)
    ds = build_data(recipe)
    torch.manual_seed(recipe.seed)
    weights = student
    student = build_model_for(recipe.student, ds)
    if weights is not None:
        load_student_weights(student, weights)
    teacher = load_teacher(recipe.teachers[0], ds)
    quiet = recipe.model_copy(update={"train": recipe.train.model_copy(update={"tensorboard": False})})
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(quiet, tmp, ds, [student], [teacher], device)
        scored = [name for name, view in tr.views if getattr(view, "uses_student", False)]
        if scored and weights is None:
            raise KDLabError(
                f"T. stddev: view {scored[0]!r} scores its candidates with the student; pass the trained "
                "student with --student RUN_DIR_OR_WEIGHTS (a fresh student would pick by noise)"
            )
        sources = ["clean"] + [v.name for v in recipe.views]
        means: dict[str, list[torch.Tensor]] = {s: [] for s in ["all", *sources]}
        acc: dict[str, list[torch.Tensor]] = {s: [] for s in means}
        batches = 0
        for epoch in range(epochs):
            gen = torch.Generator().manual_seed(epoch_seed(recipe.seed, epoch))
            for step, (x, y, idx) in enumerate(tr.train_loader.iter_epoch(epoch)):
                x = tr.prepare(x, gen)
                probs = {"clean": teacher(x).logits.softmax(1).cpu()}
                for name, view in tr.views:
                    vb = view(
                        ViewInput(
                            x=x,
                            y=y,
                            idx=idx,
                            gen=gen,
                            teacher=teacher,
                            student=student,
                            lo=tr.lo,
                            hi=tr.hi,
                            epoch=epoch,
                            step=step,
                            data=tr.train_data,
                        )
                    )
                    out = vb.teacher if vb.teacher is not None else teacher(vb.x)
                    probs[name] = out.logits.softmax(1).cpu()
                for name, p in probs.items():
                    acc[name].append(p)
                acc["all"].extend(probs.values())
                batches += 1
                if batches % group == 0:
                    for name in means:
                        means[name].append(torch.cat(acc[name]).mean(0))
                        acc[name] = []
    if len(means["all"]) < 2:
        raise KDLabError(f"T. stddev needs at least 2 groups of {group} batches; raise epochs or lower group")
    result = {name: float(torch.stack(m).std(0).mean()) for name, m in means.items()}
    return {
        "t_stddev": result["all"],
        "by_source": {k: v for k, v in result.items() if k != "all"},
        "groups": len(means["all"]),
        "epochs": epochs,
        "group": group,
    }
