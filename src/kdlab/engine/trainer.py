"""The one training loop.

Every method, every stage of a multi-stage recipe and every online cohort (DML) runs through
``Trainer.fit``. The pieces it drives each have their own room: ``stages.py`` plans stages and epoch seeds,
``batch.py`` makes the clean batch (augment, normalise, the drawn augmentation parameters and the teacher-cache
view number), ``objectives.py`` builds each stage's objectives and checks them against the teachers, ``step.py``
turns a batch into named losses, ``tally.py`` sums them on the device, ``evaluate.py`` computes held-out metrics,
and ``kdlab.teachers`` serves teacher outputs (a live frozen module or a soft-label cache). The loop itself only
orders them: stages, epochs, the optimiser step, logging and checkpoints.

Reproducibility: each epoch reseeds every RNG from (seed, global epoch) and the loader draws its order from the
same pair, so a run resumed from an epoch-end checkpoint replays the same batches and ends with bitwise
identical weights on the CPU.

No host synchronisation inside an epoch: losses and sample counts accumulate on the device and are read at the
end of the epoch (or every ``train.sync_every`` steps), where the non-finite check also happens and names the
first bad step.

Under ``torchrun`` (``kdlab.engine.distributed``) the same loop runs on every rank: the training loader
yields this rank's shard of the epoch order, the step runs through DistributedDataParallel over the students
and the objectives (gradients averaged in buckets during the backward), the logged training losses are
averaged across ranks, and evaluation, logging, checkpoints and weights are rank 0's, from the bare students
(the others wait at a barrier). One process: nothing is wrapped, nothing changes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.capture import Capture
from kdlab.data import make_loader
from kdlab.engine import distributed as dist
from kdlab.engine.batch import make_pipeline
from kdlab.engine.checkpoint import (
    load_state,
    rng_state,
    save_state,
    save_weights,
    set_rng_state,
)
from kdlab.engine.devices import AUTOCAST, precision_for, teacher_autocast
from kdlab.engine.evaluate import Evaluator
from kdlab.engine.logger import RunLogger
from kdlab.engine.objectives import build_objectives, carry_over
from kdlab.engine.optim import build_optimizer, lr_factor
from kdlab.engine.progress import epoch_bar, epoch_line
from kdlab.engine.stages import Stage, epoch_seed, plan_stages, reseed
from kdlab.engine.step import Clock, ExtraViews, StepModule, distill_step
from kdlab.engine.tally import DeviceSums
from kdlab.errors import KDLabError
from kdlab.methods.base import FitData
from kdlab.recipe import CompileSpec, Recipe
from kdlab.runfiles import BEST_WEIGHTS, CHECKPOINT, FINAL_WEIGHTS


@dataclass
class TrainData:
    """What views that regenerate offline sets get: the training split (raw scale) and the normaliser."""

    split: Any
    prepare: Any


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        dataset: Any,
        students: Sequence[nn.Module],
        teachers: Sequence[Any],
        device: torch.device,
        *,
        callbacks: Sequence[Any] = (),
    ):
        self.recipe, self.run_dir, self.ds, self.device = recipe, Path(run_dir), dataset, device
        self.students = nn.ModuleList(students).to(device)
        self.teachers = list(teachers)
        self.callbacks = list(callbacks)
        tr = recipe.train
        self.fsdp = dist.world() > 1 and tr.parallel == "fsdp"
        if self.fsdp and len(plan_stages(recipe)) > 1:
            raise KDLabError(
                "train.parallel: fsdp runs single-stage recipes (a new stage would reshard the "
                "students); use ddp for `stages:`"
            )
        if dist.world() > 1:
            if tr.sync_batchnorm:
                if device.type != "cuda":
                    raise KDLabError(
                        "train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                        "kernel); drop it on the CPU"
                    )
                self.students = nn.SyncBatchNorm.convert_sync_batchnorm(self.students)
        if device.type == "cuda":  # fixed batch shapes: let cuDNN pick the fastest convolution once per shape
            torch.backends.cudnn.benchmark = True
        precision = precision_for(tr, device)
        self.autocast = AUTOCAST[precision]
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.pipeline = make_pipeline(recipe, dataset, device)
        self.memory_format = self.pipeline.memory_format
        if self.memory_format is not None:
            self.students.to(memory_format=self.memory_format)
        # What rank 0 evaluates and saves: the students themselves, or under FSDP a bare copy that receives the
        # gathered full state at every epoch end (before any hook is registered on the students).
        self.rank0_students = copy.deepcopy(self.students) if self.fsdp and dist.is_main() else self.students
        t_autocast = teacher_autocast(tr, device)
        for t in self.teachers:
            if t.live is not None:
                t.live.to(device, self.memory_format)
                t.live.autocast = t_autocast
            table = getattr(t, "table", None)
            if table is not None:  # a cache of K stored views per sample: the loader applies those rows
                if self.pipeline.table is not None and not torch.equal(self.pipeline.table, table):
                    raise KDLabError(
                        "teacher caches with different stored views cannot serve one run; build them "
                        "with the same teacher.cache.views and seed"
                    )
                self.pipeline.table = table.to(device)
        if tr.compile:
            self._compile(CompileSpec() if tr.compile is True else tr.compile)
        self.views = [(spec.name, spec.build()) for spec in recipe.views]
        # Valid inputs in normalised units (raw data lies in [0, 1] for images), for views that perturb inputs.
        shape = (1, -1) + (1,) * (len(dataset.input_shape) - 1)
        mean, std = self.pipeline.mean, self.pipeline.std
        if mean.numel() and dataset.train.x.is_floating_point():
            raw_lo, raw_hi = float(dataset.train.x.min()), float(dataset.train.x.max())
            self.lo = ((raw_lo - mean) / std).reshape(shape)
            self.hi = ((raw_hi - mean) / std).reshape(shape)
        else:  # text (token ids) or unnormalised data: perturbation views bound nothing
            self.lo = self.hi = None
        self.train_data = TrainData(dataset.train, lambda raw: self.pipeline.prepare(raw.to(device)))
        self.train_loader = self._loader(dataset.train, shuffle=True, shard=True)
        val = getattr(dataset, "val", None)
        self.val_loader = None if val is None else self._loader(val)
        # The best epoch is picked on validation when there is one (early stopping without peeking at test);
        # otherwise on test top-1, the CRD/RepDistiller convention, reported next to the last epoch.
        self.select_by = "val/top1" if val is not None else "test/top1"
        self.eval_loader = self._loader(dataset.test)
        self.evaluator = Evaluator(
            self.eval_loader,
            self.val_loader,
            lambda x: self.pipeline.prepare(x.to(device)),
            self.teachers[0] if self.teachers else None,
            self.autocast,
        )
        self.stages = plan_stages(recipe)
        self.is_rank0 = dist.is_main()  # rank 0 (always, in one process) evaluates and writes the run folder
        self.logger = RunLogger(self.run_dir, tensorboard=tr.tensorboard, recipe=recipe) if self.is_rank0 else None
        self._prev_objectives: nn.ModuleList | None = None
        self.step_module: nn.Module | None = None  # the stage's DDP wrapper under torchrun
        self.best: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.wall_s = 0.0

    # ------------------------------------------------------------------ building blocks
    def _compile(self, spec: CompileSpec) -> None:
        """torch.compile the students in place (hooks and state-dict keys unchanged) and, unless
        ``teacher: false``, the live teachers' forwards. ``cuda_graphs`` = mode ``reduce-overhead``."""
        mode = "reduce-overhead" if spec.cuda_graphs else spec.mode
        kwargs = {"mode": None if mode == "default" else mode, "fullgraph": spec.fullgraph}
        for s in self.students:
            s.compile(**kwargs)
        if spec.teacher:
            for t in self.teachers:
                if t.live is not None:
                    t.live.model.compile(**kwargs)

    def _step_module(self, stage: Stage, objectives: nn.ModuleList) -> nn.Module | None:
        """Under torchrun, the students and objectives wrapped in DistributedDataParallel; None in one
        process (the step calls ``distill_step`` directly)."""
        if dist.world() == 1:
            return None
        if self.fsdp:  # sharded in place; the step calls distill_step on the sharded modules directly
            dist.shard([*self.students, *objectives])
            return None
        find_unused = self.recipe.train.find_unused
        if find_unused is None:  # auto: a parameter may get no gradient in some step
            find_unused = (
                stage.trainable is not None or bool(self.views) or any(p.requires_grad for p in objectives.parameters())
            )
        return dist.wrap(StepModule(self.students, objectives), self.device, find_unused=find_unused)

    def _loader(self, split: Any, shuffle: bool = False, shard: bool = False) -> Any:
        """Training order (shuffled, the recipe's batch size) or evaluation order (in order, eval batch size).
        ``shard``: this rank's part of every epoch's order (data-parallel training; all of it in one process)."""
        d = self.recipe.data
        extra = {"rank": dist.rank(), "world": dist.world()} if shard and dist.world() > 1 else {}
        return make_loader(
            split,
            batch_size=d.batch_size if shuffle else d.eval_batch_size,
            shuffle=shuffle,
            drop_last=d.drop_last and shuffle,
            device=self.device,
            seed=self.recipe.seed,
            resident=d.resident,
            num_workers=d.num_workers,
            **extra,
        )

    def prepare(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """A raw batch made ready for a model: augmented (when ``gen`` is given), normalised, laid out."""
        if gen is None:
            return self.pipeline.prepare(x)
        aug, _ = self.pipeline.draw(x, torch.arange(len(x), device=x.device), gen)
        return self.pipeline.finish(self.pipeline.apply(x, aug))

    def _build_objectives(self, stage: Stage) -> nn.ModuleList:
        """One objective per student for the stage, checked against the teachers, set up and fitted."""
        fit = FitData(
            teacher_features=self.teacher_features,
            labels=self.ds.train.y.cpu(),
            num_classes=self.ds.num_classes,
            seed=self.recipe.seed,
            run_dir=self.run_dir,
        )
        objectives = build_objectives(
            stage.objective, self.students, self.teachers, self.views, self.ds, self.device, fit
        )
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
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of every student on the test split, and on the validation split when the
        recipe carves one (``data.val_fraction``): then the best epoch is chosen on validation, not test."""
        return self.evaluator(self.rank0_students)

    @torch.no_grad()
    def teacher_features(self, taps: list[str]) -> dict[str, torch.Tensor]:
        """The first teacher's features at ``taps`` over the training split, in order, without augmentation."""
        if not self.teachers:
            raise KDLabError("this term fits to a teacher, but the recipe has none")
        teacher = self.teachers[0].live
        if teacher is None:
            raise KDLabError(
                "a term fits to the teacher's features over the training split (letKD templates), but "
                "the teacher is a cache only; give the teacher `run:` or `model:` next to `cache:`"
            )
        teacher.add_taps(list(taps))
        loader = self._loader(self.ds.train)
        seen = teacher.samples_seen
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
        for x, _, _ in loader.iter_epoch(0):
            out = teacher(self.pipeline.prepare(x))
            for t in taps:
                chunks[t].append(out.feats[t].cpu())
        teacher.samples_seen = seen  # a one-off preparation pass, not a per-step training cost
        return {t: torch.cat(v) for t, v in chunks.items()}

    def teacher_metrics(self) -> dict[str, float]:
        return self.evaluator.teacher_metrics()

    def _teacher_passes(self) -> int:
        live = self.teachers[0].live if self.teachers else None
        return live.samples_seen if live is not None else 0

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
            for stage_index in range(start_stage, len(self.stages)):
                stage = self.stages[stage_index]
                objectives = self._build_objectives(stage)
                params = self._trainable(stage) + [p for p in objectives.parameters() if p.requires_grad]
                first = 0
                resuming = resume is not None and stage_index == start_stage
                if resuming:
                    self._state_modules(objectives).load_state_dict(resume["modules"])
                    if self.scaler is not None and resume.get("scaler"):
                        self.scaler.load_state_dict(resume["scaler"])
                    set_rng_state(resume["rng"])
                    first = start_epoch
                dist.broadcast_state(self._state_modules(objectives))  # every rank starts from rank 0's model
                captures = [Capture(s, objectives[k].taps().student) for k, s in enumerate(self.students)]
                ddp = self.step_module = self._step_module(stage, objectives)
                if self.fsdp:  # the sharded parameters replaced the bare ones: the optimiser steps those
                    params = [p for p in self._state_modules(objectives).parameters() if p.requires_grad]
                opt = build_optimizer(params, stage.optim)
                if resuming and start_epoch < stage.epochs:
                    if self.fsdp:
                        dist.load_full_optimizer_state(self._state_modules(objectives), opt, resume["optimizer"])
                    else:
                        opt.load_state_dict(resume["optimizer"])
                try:
                    for epoch in range(first, stage.epochs):
                        record = self._train_epoch(
                            stage, stage_index, epoch, offset + epoch, objectives, captures, opt, ddp
                        )
                        self._after_epoch(stage, stage_index, epoch, offset + epoch, record, objectives, opt)
                finally:
                    for c in captures:
                        c.remove()
                offset += stage.epochs
        finally:
            if self.logger is not None:
                self.logger.close()
        return self.summary()

    def _train_epoch(
        self,
        stage: Stage,
        stage_index: int,
        epoch: int,
        global_epoch: int,
        objectives: nn.ModuleList,
        captures: list[Capture],
        opt: torch.optim.Optimizer,
        ddp: nn.Module | None = None,
    ) -> dict[str, Any]:
        seed = epoch_seed(self.recipe.seed, global_epoch)
        reseed(seed)
        gen = torch.Generator(self.device).manual_seed(seed)  # augmentation drawn on the device: no copies
        self.students.train()
        objectives.train()
        steps = len(self.train_loader)
        acc = DeviceSums(self.device)
        t0 = time.perf_counter()
        lr0 = stage.optim.lr
        seen0 = self._teacher_passes()
        params = [p for group in opt.param_groups for p in group["params"]]  # what the step updates
        extra = ExtraViews(self.views, gen, self.lo, self.hi, self.train_data)
        sync_every = self.recipe.train.sync_every or steps
        progress = self._progress(f"{self.recipe.name} [{stage.name}] epoch {epoch + 1}/{stage.epochs}", steps)
        for step, (x, y, idx) in enumerate(self.train_loader.iter_epoch(global_epoch)):
            factor = lr_factor(stage.schedule, epoch, step, steps)
            for group in opt.param_groups:
                group["lr"] = lr0 * factor
            batch = self.pipeline(x, y, idx, gen)
            kw = dict(
                captures=captures,
                extra=extra,
                concat_views=self.recipe.train.concat_views,
                autocast=self.autocast,
                clock=Clock(epoch, stage.epochs, step, steps),
            )
            if ddp is not None:  # the backward all-reduces the gradients (students and connectors), bucketed
                total, named, stats = _ddp_step(ddp, batch, self.teachers, kw)
            else:
                res = distill_step(batch, self.students, objectives, self.teachers, **kw)
                total, named, stats = res.total, res.named, res.stats
            opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
            else:
                total.backward()
            if self.scaler is not None:  # after DDP's all-reduce: every rank's scaler sees the same gradients
                self.scaler.unscale_(opt)
            if self.recipe.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.recipe.train.grad_clip)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            acc.add(step, len(y), total, {**named, **stats})
            if (step + 1) % sync_every == 0 or step == steps - 1:
                acc.check(f"stage {stage.name!r} epoch {epoch + 1}", step)
            progress.step(lambda: float(acc.sums["loss"]) / max(1, acc.count))  # read only when a bar shows it
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(
                        self, {"stage": stage_index, "epoch": epoch, "step": step, "global_epoch": global_epoch}
                    )
        if progress is not None:
            progress.stop()
        sums, count = acc.read()
        if dist.world() > 1:  # log the mean over all ranks' samples (every rank has the same keys)
            keys = sorted(sums)
            tot = dist.all_reduce_sum(
                torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=self.device)
            ).tolist()
            sums, count = dict(zip(keys, tot[:-1])), int(tot[-1])
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "global_epoch": global_epoch + 1,
            "stage": stage.name,
            "lr": lr0 * lr_factor(stage.schedule, epoch, 0, steps),
        }
        record.update({(k if k.startswith("view/") else f"train/{k}"): v / max(1, count) for k, v in sums.items()})
        if self.teachers:  # live teacher samples per clean sample: 1 for plain KD, m + 1 for CutMixPick, 0 cached
            record["cost/teacher_passes"] = (self._teacher_passes() - seen0) / max(1, count)
        record["time/train_s"] = time.perf_counter() - t0
        return record

    def _after_epoch(
        self,
        stage: Stage,
        stage_index: int,
        epoch: int,
        global_epoch: int,
        record: dict[str, Any],
        objectives: nn.ModuleList,
        opt: torch.optim.Optimizer,
    ) -> None:
        save_now = (epoch + 1) % self.recipe.train.checkpoint_every == 0 or epoch == stage.epochs - 1
        full: dict[str, Any] | None = None
        if dist.world() > 1:
            dist.broadcast_state(self._state_modules(objectives), params=False)  # per-rank BatchNorm stats
            if self.fsdp:  # every rank takes part in gathering the full state; rank 0 keeps it
                model, optim = dist.full_state(self._state_modules(objectives), opt if save_now else None)
                full = {"modules": model, "optimizer": optim}
                if self.is_rank0:
                    self.rank0_students.load_state_dict(
                        {k[len("students.") :]: v for k, v in model.items() if k.startswith("students.")}
                    )
            if not self.is_rank0:  # rank 0 evaluates and writes; the others wait for it
                dist.barrier()
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, record)
                return
        t0 = time.perf_counter()
        last_of_run = stage_index == len(self.stages) - 1 and epoch == stage.epochs - 1
        if (epoch + 1) % self.recipe.train.eval_every == 0 or epoch == stage.epochs - 1:
            record.update(self.evaluate())
            self.last = {k: v for k, v in record.items() if k.startswith(("test/", "val/"))}
            self.last["epoch"] = global_epoch + 1
            key = self.select_by
            if key in record and record[key] > self.best.get(key, -1.0):
                self.best = {**self.last, "selected_by": key}
                save_weights(self.run_dir / BEST_WEIGHTS, self.rank0_students[0].state_dict())
        record["time/epoch_s"] = record["time/train_s"] + time.perf_counter() - t0
        self.wall_s += record["time/epoch_s"]
        self.logger.log(record)
        epoch_line(
            f"{self.recipe.name} [{stage.name}] epoch {epoch + 1}/{stage.epochs}",
            record,
            setting=self.recipe.train.progress,
        )
        if save_now:
            save_state(
                self.run_dir / CHECKPOINT,
                {
                    "stage": stage_index,
                    "epoch": epoch + 1,
                    "global_epoch": global_epoch + 1,
                    "modules": full["modules"] if full else self._state_modules(objectives).state_dict(),
                    "optimizer": full["optimizer"] if full else opt.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "rng": rng_state(),
                    "best": self.best,
                    "last": self.last,
                    "wall_s": self.wall_s,
                },
            )
        if last_of_run:
            save_weights(self.run_dir / FINAL_WEIGHTS, self.rank0_students[0].state_dict())
            for k in range(1, len(self.students)):
                save_weights(self.run_dir / f"cohort{k}.safetensors", self.rank0_students[k].state_dict())
        dist.barrier()
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, record)

    def _progress(self, label: str, total: int):
        """The epoch's bar (engine/progress.py): running loss and last held-out top-1, on a terminal only."""
        return epoch_bar(label, total, setting=self.recipe.train.progress, main=self.is_rank0, last=self.last)

    def summary(self) -> dict[str, Any]:
        if not self.is_rank0:  # only rank 0 evaluated; the others' summary is not written
            return {"name": self.recipe.name, "seed": self.recipe.seed, "status": "finished", "rank": dist.rank()}
        return {
            "name": self.recipe.name,
            "seed": self.recipe.seed,
            "epochs": sum(s.epochs for s in self.stages),
            "wall_s": self.wall_s,
            "final": self.last,
            "best": self.best,
            "teacher": self.teacher_metrics(),
            "status": "finished",
        }


def _ddp_step(ddp: nn.Module, batch: Any, teachers: list[Any], kw: dict[str, Any]):
    """One step through DDP; its "parameters were not used" error (find_unused off while some trainable
    parameter got no gradient in the previous step) becomes one line saying what to set."""
    try:
        return ddp(batch, teachers, **kw)
    except RuntimeError as e:
        if "finished reduction in the prior iteration" in str(e):
            raise KDLabError(
                "DistributedDataParallel: some trainable parameters got no gradient in the previous "
                "step; set train.find_unused: true"
            ) from None
        raise


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINT
    return load_state(path) if path.exists() else None
