"""The one training loop.

Every method, every stage of a multi-stage recipe and every online cohort (DML) runs through
``Trainer.fit``: the loop only knows students, frozen teachers, views and an objective per student.
Reproducibility: each epoch reseeds every RNG from (seed, global epoch) and the loader draws its order
from the same pair, so a run resumed from an epoch-end checkpoint replays the same batches and ends with
bitwise identical weights on the CPU.

Under ``torchrun`` (``kdlab.engine.distributed``) the same loop runs on every rank: the training loader
yields this rank's shard of the epoch order, gradients of students and connectors are averaged across ranks
after each backward, the logged training losses are averaged across ranks, and evaluation, logging,
checkpoints and weights are rank 0's (the others wait at a barrier). One process: nothing changes.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kdlab.capture import Capture, probe_shapes
from kdlab.engine import distributed as dist
from kdlab.engine.checkpoint import load_state, rng_state, save_state, save_weights, set_rng_state
from kdlab.engine.logger import RunLogger
from kdlab.engine.progress import epoch_bar, epoch_line
from kdlab.engine.metrics import classification_metrics
from kdlab.engine.optim import build_optimizer, lr_factor
from kdlab.errors import KDLabError
from kdlab.methods.base import FitData, Objective, SetupInfo, StepContext
from kdlab.recipe import OptimSpec, Recipe, ScheduleSpec, TermSpec
from kdlab.teacher import Teacher
from kdlab.views.extra import ViewInput

CHECKPOINT = "checkpoint.safetensors"
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Callback(Protocol):
    """Optional hooks; tests use them to interrupt a run mid-epoch."""

    def on_step_end(self, trainer: "Trainer", state: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...


@dataclass
class Stage:
    name: str
    objective: dict[str, TermSpec]
    optim: OptimSpec
    schedule: ScheduleSpec
    trainable: list[str] | None

    @property
    def epochs(self) -> int:
        return self.schedule.total_epochs


@dataclass
class TrainData:
    """What views that regenerate offline sets get: the training split (raw scale) and the normaliser."""

    split: Any
    prepare: Any


def plan_stages(recipe: Recipe) -> list[Stage]:
    """The recipe's stages with inherited blocks filled in (a recipe without ``stages:`` is one stage)."""
    if not recipe.stages:
        return [Stage("main", recipe.objective, recipe.optim, recipe.schedule, None)]
    out = []
    for s in recipe.stages:
        sched = s.schedule or recipe.schedule
        if s.epochs is not None:
            sched = sched.model_copy(update={"epochs": s.epochs})
        out.append(Stage(s.name, s.objective or recipe.objective, s.optim or recipe.optim, sched, s.trainable))
    return out


def epoch_seed(seed: int, global_epoch: int) -> int:
    return (seed * 1_000_003 + global_epoch * 7_919 + 17) % (2**63 - 1)


def reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path, dataset: Any, students: Sequence[nn.Module],
                 teachers: Sequence[Teacher], device: torch.device, *, callbacks: Sequence[Any] = ()):
        from kdlab.views.basic import normalize

        self.recipe, self.run_dir, self.ds, self.device = recipe, Path(run_dir), dataset, device
        self.students = nn.ModuleList(students).to(device)
        self.teachers = list(teachers)
        self.callbacks = list(callbacks)
        tr = recipe.train
        self.autocast = AUTOCAST[tr.precision]
        if tr.precision == "fp16" and device.type != "cuda":
            raise KDLabError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        self.scaler = torch.amp.GradScaler("cuda") if tr.precision == "fp16" else None
        self.memory_format = torch.channels_last if tr.channels_last and len(dataset.input_shape) == 3 else None
        if self.memory_format is not None:
            self.students.to(memory_format=self.memory_format)
        for t in self.teachers:
            t.to(device, self.memory_format)
            if tr.teacher_bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
                t.autocast = torch.bfloat16
        if tr.compile:
            for s in self.students:
                s.compile()
        self.views = [v.build() for v in recipe.data.augment]
        self.extra_views = [v.build() for v in recipe.views]
        self._normalize = normalize
        self.mean = torch.tensor(dataset.mean, device=device)
        self.std = torch.tensor(dataset.std, device=device)
        # Valid inputs in normalised units (raw data lies in [0, 1] for images), for views that perturb inputs.
        shape = (1, -1) + (1,) * (len(dataset.input_shape) - 1)
        if self.mean.numel() and dataset.train.x.is_floating_point():
            raw_lo, raw_hi = float(dataset.train.x.min()), float(dataset.train.x.max())
            self.lo = ((raw_lo - self.mean) / self.std).reshape(shape)
            self.hi = ((raw_hi - self.mean) / self.std).reshape(shape)
        else:  # text (token ids) or unnormalised data: perturbation views bound nothing
            self.lo = self.hi = None
        self.train_data = TrainData(dataset.train, lambda raw: self.prepare(raw.to(device), None))
        self.train_loader = self._loader(dataset.train, shuffle=True, shard=True)
        val = getattr(dataset, "val", None)
        self.val_loader = None if val is None else self._loader(val)
        # The best epoch is picked on validation when there is one (early stopping without peeking at test);
        # otherwise on test top-1, the CRD/RepDistiller convention, reported next to the last epoch.
        self.select_by = "val/top1" if val is not None else "test/top1"
        self.eval_loader = self._loader(dataset.test)
        self.stages = plan_stages(recipe)
        self.main = dist.is_main()  # rank 0 (always, in one process) evaluates and writes the run folder
        self.logger = RunLogger(self.run_dir, tensorboard=tr.tensorboard, recipe=recipe) if self.main else None
        self._teacher_eval: torch.Tensor | None = None
        self._eval_labels: dict[int, torch.Tensor] = {}
        self._prev_objectives: nn.ModuleList | None = None
        self.best: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.wall_s = 0.0

    # ------------------------------------------------------------------ building blocks
    def _loader(self, split: Any, shuffle: bool = False, shard: bool = False) -> Any:
        """Training order (shuffled, the recipe's batch size) or evaluation order (in order, eval batch size).
        ``shard``: this rank's part of every epoch's order (data-parallel training; all of it in one process)."""
        from kdlab.data import make_loader

        d = self.recipe.data
        extra = {"rank": dist.rank(), "world": dist.world()} if shard and dist.world() > 1 else {}
        return make_loader(split, batch_size=d.batch_size if shuffle else d.eval_batch_size, shuffle=shuffle,
                           drop_last=d.drop_last and shuffle, device=self.device, seed=self.recipe.seed,
                           resident=d.resident, num_workers=d.num_workers, **extra)

    def prepare(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Views (train only) in raw scale, then normalisation, on the device. Token ids (integer inputs,
        text) and datasets without mean/std pass through unnormalised."""
        if gen is not None:
            for view in self.views:
                x = view(x, gen)
        if x.is_floating_point() and self.mean.numel():
            x = self._normalize(x, self.mean, self.std)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _build_objectives(self, stage: Stage) -> nn.ModuleList:
        objectives = []
        for student in self.students:
            obj = Objective({label: spec.build() for label, spec in stage.objective.items()})
            if obj.needs_teacher and not self.teachers:
                need = [lbl for lbl, t in obj.terms.items() if t.needs_teacher]
                raise KDLabError(f"objective terms {need} need a teacher: add `teacher:` to the recipe")
            taps = obj.taps()
            for t in self.teachers:
                t.add_taps(list(taps.teacher))
            s_shapes = probe_shapes(student, taps.student, self.ds.input_shape, self.device)
            t_shapes = (probe_shapes(self.teachers[0].model, taps.teacher, self.ds.input_shape, self.device)
                        if self.teachers else {})
            info = SetupInfo(num_train=len(self.ds.train), num_classes=self.ds.num_classes,
                             input_shape=tuple(self.ds.input_shape))
            obj.setup(s_shapes, t_shapes, info)
            obj.to(self.device)
            obj.fit(FitData(teacher_features=self.teacher_features, labels=self.ds.train.y.cpu(),
                            num_classes=self.ds.num_classes, seed=self.recipe.seed, run_dir=self.run_dir))
            objectives.append(obj)
        objectives = nn.ModuleList(objectives).to(self.device)
        if self._prev_objectives is not None:
            carry_over(self._prev_objectives, objectives)
        self._prev_objectives = objectives
        return objectives

    def _trainable(self, stage: Stage) -> list[nn.Parameter]:
        params = []
        for student in self.students:
            for name, p in student.named_parameters():
                on = stage.trainable is None or any(name == t or name.startswith(t + ".") for t in stage.trainable)
                p.requires_grad_(on)
                if on:
                    params.append(p)
        return params

    def _state_modules(self, objectives: nn.ModuleList) -> nn.ModuleDict:
        return nn.ModuleDict({"students": self.students, "objectives": objectives})

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def teacher_eval_logits(self) -> torch.Tensor | None:
        if not self.teachers:
            return None
        if self._teacher_eval is None:  # the teacher is frozen: its held-out logits are computed once
            outs = [self.teachers[0](self.prepare(x, None)).logits.cpu() for x, _, _ in self.eval_loader.iter_epoch(0)]
            self._teacher_eval = torch.cat(outs)
        return self._teacher_eval

    @torch.no_grad()
    def _logits(self, model: nn.Module, loader: Any) -> torch.Tensor:
        was = model.training
        model.eval()
        with self._autocast():
            out = torch.cat([model(self.prepare(x, None)).float().cpu() for x, _, _ in loader.iter_epoch(0)])
        model.train(was)
        return out

    def _labels(self, loader: Any) -> torch.Tensor:
        """An evaluation split's labels in loader order (fixed), gathered once."""
        if id(loader) not in self._eval_labels:
            self._eval_labels[id(loader)] = torch.cat([y.cpu() for _, y, _ in loader.iter_epoch(0)])
        return self._eval_labels[id(loader)]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of every student on the test split, and on the validation split when the
        recipe carves one (``data.val_fraction``): then the best epoch is chosen on validation, not test."""
        t_logits = self.teacher_eval_logits()
        out: dict[str, float] = {}
        ys = self._labels(self.eval_loader)
        for k, student in enumerate(self.students):
            m = classification_metrics(self._logits(student, self.eval_loader), ys, t_logits)
            if k == 0:
                out.update(m)
            else:
                out[f"cohort{k}/test/top1"] = m["test/top1"]
        if self.val_loader is not None:
            yv = self._labels(self.val_loader)
            out.update(classification_metrics(self._logits(self.students[0], self.val_loader), yv, prefix="val/"))
        return out

    @torch.no_grad()
    def teacher_features(self, taps: list[str]) -> dict[str, torch.Tensor]:
        """The first teacher's features at ``taps`` over the training split, in order, without augmentation."""
        if not self.teachers:
            raise KDLabError("this term fits to a teacher, but the recipe has none")
        teacher = self.teachers[0]
        teacher.add_taps(list(taps))
        loader = self._loader(self.ds.train)
        seen = teacher.samples_seen
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
        for x, _, _ in loader.iter_epoch(0):
            out = teacher(self.prepare(x, None))
            for t in taps:
                chunks[t].append(out.feats[t].cpu())
        teacher.samples_seen = seen  # a one-off preparation pass, not a per-step training cost
        return {t: torch.cat(v) for t, v in chunks.items()}

    def teacher_metrics(self) -> dict[str, float]:
        t_logits = self.teacher_eval_logits()
        if t_logits is None:
            return {}
        return classification_metrics(t_logits, self._labels(self.eval_loader))

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        start_stage, start_epoch, global_epoch = 0, 0, 0
        if resume is not None:
            start_stage, start_epoch = resume["stage"], resume["epoch"]
            global_epoch = resume["global_epoch"]
            self.best, self.last, self.wall_s = resume["best"], resume["last"], resume["wall_s"]
            if self.logger is not None:
                self.logger.truncate(global_epoch)
        offset = sum(s.epochs for s in self.stages[:start_stage])
        try:
            for si in range(start_stage, len(self.stages)):
                stage = self.stages[si]
                objectives = self._build_objectives(stage)
                params = self._trainable(stage) + [p for p in objectives.parameters() if p.requires_grad]
                opt = build_optimizer(params, stage.optim)
                first = 0
                if resume is not None and si == start_stage:
                    self._state_modules(objectives).load_state_dict(resume["modules"])
                    if start_epoch < stage.epochs:
                        opt.load_state_dict(resume["optimizer"])
                    if self.scaler is not None and resume.get("scaler"):
                        self.scaler.load_state_dict(resume["scaler"])
                    set_rng_state(resume["rng"])
                    first = start_epoch
                dist.broadcast_state(self._state_modules(objectives))  # every rank starts from rank 0's model
                captures = [Capture(s, objectives[k].taps().student) for k, s in enumerate(self.students)]
                try:
                    for epoch in range(first, stage.epochs):
                        record = self._train_epoch(stage, si, epoch, offset + epoch, objectives, captures, opt)
                        self._after_epoch(stage, si, epoch, offset + epoch, record, objectives, opt)
                finally:
                    for c in captures:
                        c.remove()
                offset += stage.epochs
        finally:
            if self.logger is not None:
                self.logger.close()
        return self.summary()

    def _train_epoch(self, stage: Stage, si: int, epoch: int, g: int, objectives: nn.ModuleList,
                     captures: list[Capture], opt: torch.optim.Optimizer) -> dict[str, Any]:
        seed = epoch_seed(self.recipe.seed, g)
        reseed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.students.train()
        objectives.train()
        steps = len(self.train_loader)
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        lr0 = stage.optim.lr
        seen0 = self.teachers[0].samples_seen if self.teachers else 0
        params = [p for group in opt.param_groups for p in group["params"]]  # what the step updates
        progress = self._progress(f"{self.recipe.name} [{stage.name}] epoch {epoch + 1}/{stage.epochs}", steps)
        for step, (x, y, idx) in enumerate(self.train_loader.iter_epoch(g)):
            factor = lr_factor(stage.schedule, epoch, step, steps)
            for group in opt.param_groups:
                group["lr"] = lr0 * factor
            x = self.prepare(x, gen)
            total, named, vstats = self._step_loss(x, y, idx, gen, objectives, captures, stage, epoch, step, steps)
            if not torch.isfinite(total):
                raise KDLabError(f"non-finite loss at stage {stage.name!r} epoch {epoch + 1} step {step}: "
                                 f"{ {k: float(v) for k, v in named.items()} }")
            opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
            else:
                total.backward()
            if dist.world() > 1:  # data parallel: the mean gradient over ranks (students and connectors),
                dist.all_reduce_grads(params)  # before unscale_
            if self.scaler is not None:  # so that every rank's scaler sees the same (in)finite gradients
                self.scaler.unscale_(opt)
            if self.recipe.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.recipe.train.grad_clip)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            n = len(y)
            count += n
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * n
            for k, v in {**named, **vstats}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            progress.step(sums["loss"] / max(1, count))
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, {"stage": si, "epoch": epoch, "step": step, "global_epoch": g})
        if progress is not None:
            progress.stop()
        if dist.world() > 1:  # log the mean over all ranks' samples (every rank has the same keys)
            keys = sorted(sums)
            tot = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64,
                                                   device=self.device)).tolist()
            sums, count = dict(zip(keys, tot[:-1])), int(tot[-1])
        record: dict[str, Any] = {"epoch": epoch + 1, "global_epoch": g + 1, "stage": stage.name,
                                  "lr": lr0 * lr_factor(stage.schedule, epoch, 0, steps)}
        record.update({(k if k.startswith("view/") else f"train/{k}"): v / max(1, count) for k, v in sums.items()})
        if self.teachers:  # teacher samples per clean sample: 1 for plain KD, m + 1 for CutMixPick
            record["cost/teacher_passes"] = (self.teachers[0].samples_seen - seen0) / max(1, count)
        record["time/train_s"] = time.perf_counter() - t0
        return record

    def _step_loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator,
                   objectives: nn.ModuleList, captures: list[Capture], stage: Stage, epoch: int, step: int,
                   steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """The objective over the clean batch and every extra view, summed over cohort students.

        Returns (total loss, named losses of student 0 — view losses prefixed ``<view>/`` —, view stats).
        """
        include_clean = not any(v.p.mode == "replace" for v in self.extra_views)
        batches: list[tuple[str, Any, float, str]] = []  # (name, ViewBatch | None, weight, targets)
        if include_clean:
            batches.append(("clean", None, 1.0, "all"))
        vstats: dict[str, float] = {}
        for spec, view in zip(self.recipe.views, self.extra_views):
            vb = view(ViewInput(x=x, y=y, idx=idx, gen=gen, teacher=self.teachers[0] if self.teachers else None,
                                student=self.students[0], lo=self.lo, hi=self.hi, epoch=epoch, step=step,
                                data=self.train_data))
            batches.append((spec.name, vb, view.p.weight, view.p.targets))
            vstats.update({f"view/{spec.name}/{k}": v for k, v in vb.stats.items()})
        inputs = [x if vb is None else vb.x for _, vb, _, _ in batches]
        t_outs = []
        for j, (name, vb, _, targets) in enumerate(batches):
            if not self.teachers or targets == "labels":
                t_outs.append([])
            elif vb is not None and vb.teacher is not None:  # the view already ran the first teacher on x'
                t_outs.append([vb.teacher] + [t(vb.x) for t in self.teachers[1:]])
            else:
                t_outs.append([t(inputs[j]) for t in self.teachers])
        total = x.new_zeros((), dtype=torch.float32)
        named: dict[str, torch.Tensor] = {}
        with self._autocast():
            per_student = [self._student_passes(s, captures[k], inputs) for k, s in enumerate(self.students)]
            for k in range(len(self.students)):
                for j, (name, vb, weight, targets) in enumerate(batches):
                    logits, feats = per_student[k][j]
                    ctx = StepContext(
                        x=inputs[j], y=y if vb is None else vb.y, idx=idx if vb is None else vb.idx,
                        s_logits=logits, s_feats=feats, teachers=t_outs[j],
                        peers=[per_student[o][j][0].detach() for o in range(len(self.students)) if o != k],
                        student=self.students[k], teacher_models=self.teachers, view=name,
                        labels=vb is None, y_mix=None if vb is None else vb.y_mix,
                        epoch=epoch, epochs=stage.epochs, step=step, steps_per_epoch=steps)
                    loss, parts = objectives[k](ctx, targets=targets)
                    total = total + weight * loss
                    if k == 0:
                        named.update(parts if name == "clean" else {f"{name}/{n}": v for n, v in parts.items()})
        return total, named, vstats

    def _student_passes(self, student: nn.Module, capture: Capture, inputs: list[torch.Tensor]):
        """(logits, feats) per input: one concatenated pass (BatchNorm sees all views as one batch) or one
        pass per input, as ``train.concat_views`` says."""
        if len(inputs) == 1 or not self.recipe.train.concat_views:
            return [(student(inp), capture.pop()) for inp in inputs]
        sizes = [len(inp) for inp in inputs]
        logits = student(torch.cat(inputs))
        feats = capture.pop()
        split_feats = {k: v.split(sizes) for k, v in feats.items()}
        return [(lg, {k: v[j] for k, v in split_feats.items()}) for j, lg in enumerate(logits.split(sizes))]

    def _after_epoch(self, stage: Stage, si: int, epoch: int, g: int, record: dict[str, Any],
                     objectives: nn.ModuleList, opt: torch.optim.Optimizer) -> None:
        if dist.world() > 1:
            dist.broadcast_state(self._state_modules(objectives), params=False)  # per-rank BatchNorm stats
            if not self.main:  # rank 0 evaluates and writes; the others wait for it
                dist.barrier()
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, record)
                return
        t0 = time.perf_counter()
        last_of_run = si == len(self.stages) - 1 and epoch == stage.epochs - 1
        if (epoch + 1) % self.recipe.train.eval_every == 0 or epoch == stage.epochs - 1:
            record.update(self.evaluate())
            self.last = {k: v for k, v in record.items() if k.startswith(("test/", "val/"))}
            self.last["epoch"] = g + 1
            key = self.select_by
            if key in record and record[key] > self.best.get(key, -1.0):
                self.best = {**self.last, "selected_by": key}
                save_weights(self.run_dir / "best.safetensors", self.students[0].state_dict())
        record["time/epoch_s"] = record["time/train_s"] + time.perf_counter() - t0
        self.wall_s += record["time/epoch_s"]
        self.logger.log(record)
        epoch_line(f"{self.recipe.name} [{stage.name}] epoch {epoch + 1}/{stage.epochs}", record,
                   setting=self.recipe.train.progress)
        if (epoch + 1) % self.recipe.train.checkpoint_every == 0 or epoch == stage.epochs - 1:
            save_state(self.run_dir / CHECKPOINT, {
                "stage": si, "epoch": epoch + 1, "global_epoch": g + 1,
                "modules": self._state_modules(objectives).state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(), "best": self.best, "last": self.last, "wall_s": self.wall_s,
            })
        if last_of_run:
            save_weights(self.run_dir / "student.safetensors", self.students[0].state_dict())
            for k in range(1, len(self.students)):
                save_weights(self.run_dir / f"cohort{k}.safetensors", self.students[k].state_dict())
        dist.barrier()
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, record)

    def _progress(self, label: str, total: int):
        """The epoch's bar (engine/progress.py): running loss and last held-out top-1, on a terminal only."""
        return epoch_bar(label, total, setting=self.recipe.train.progress, main=self.main, last=self.last)

    def summary(self) -> dict[str, Any]:
        if not self.main:  # only rank 0 evaluated; the others' summary is not written
            return {"name": self.recipe.name, "seed": self.recipe.seed, "status": "finished", "rank": dist.rank()}
        return {"name": self.recipe.name, "seed": self.recipe.seed,
                "epochs": sum(s.epochs for s in self.stages), "wall_s": self.wall_s,
                "final": self.last, "best": self.best, "teacher": self.teacher_metrics(), "status": "finished"}


def carry_over(prev: nn.ModuleList, new: nn.ModuleList) -> None:
    """A term that keeps its label and kind from one stage to the next keeps its trained state (e.g. FT's
    paraphraser, pre-trained in stage 1 and used in stage 2)."""
    for old_obj, new_obj in zip(prev, new):
        for label, term in new_obj.terms.items():
            old = old_obj.terms[label] if label in old_obj.terms else None
            if old is not None and type(old) is type(term):
                term.load_state_dict(old.state_dict(), strict=False)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINT
    return load_state(path) if path.exists() else None

