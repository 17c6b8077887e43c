"""Evidence on natural images: the catalogue and the four papers' claims on CIFAR-10 (JPEG copy), CPU-sized.

Protocol (recipes/cifar10/cpu-resnet20-resnet8.yaml): teacher resnet20 trained by kdlab on the full training
split (50,000 images, 15 epochs); student resnet8 (78 k parameters) on a fixed stratified 5,000-image subset,
15 epochs, batch 64, SGD lr 0.05 (x0.1 at 9, 12), crop (pad 4) + flip; scored on the full 10,000-image test
split every 3 epochs (best and last). The teacher's soft labels come from one exact cache (all 162 crop/flip
views of each training image), built once and read by every KD-type run and seed.
Tables (``--tables``, all by default):

  pilot         CE and KD: KD's gain must exceed the seed spread before the rest is worth running
  catalogue     CE, KD, DKD, CRD, FitNet, AT, SP, RKD, DML, BSS; controls: DKD's warm-up scaled to the schedule,
                KD trained for FitNet's epochs
  augmentation  CE and KD at x1 and x2 schedules; KD + TLmixup, TLCutMix, CutMixPick (teacher entropy) and the
                random-pick control from the same pool
  backward      KD + backward-pass samples against the random-direction control (same passes)
  letkd         letKD-1, letKD-2 and the layer without supervision, against KD
  beyond        40 % symmetric label noise and class-imbalance ratio 100: CE, KD, SP, DML, with a teacher trained
                on the same corrupted subset and early-stopped on a validation split (weights: best)

Resumable: finished runs are reused (a restarted run only trains what is missing); ``--data`` points at
another copy of the archives. Results are always named "CIFAR-10 (JPEG copy)".

    python benchmarks/bench_cifar10.py --tables pilot --seeds 0-2
    python benchmarks/bench_cifar10.py --smoke          # 2,000 images, 1 epoch: checks the pipeline in minutes
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from _runner import report, run_arms

PAIR = "recipes/cifar10/cpu-resnet20-resnet8.yaml"
M = "recipes/methods/{}.yaml"


def method(name: str, *over: str) -> tuple[list[str], list[str]]:
    return [PAIR, M.format(name)], list(over)


def tables(epochs: int, teachers: str, templates: int) -> dict[str, dict[str, tuple[list[str], list[str]]]]:
    pick = "views=[{name: cutmix_pick, criterion: %s, m: 2}]"
    x2 = "schedule.multiplier=2"
    # letKD's penultimate layer: K templates (insert 0 in letKD-1, insert 1 in letKD-2, after the intermediate one)
    k1, k2 = f"student.insert.0.kwargs.templates={templates}", f"student.insert.1.kwargs.templates={templates}"
    hint = max(1, epochs // 4)  # FitNet's hint stage: a quarter of the schedule, then KD
    fitnet = [f"stages.0.epochs={hint}", f"stages.0.schedule.epochs={hint}"]
    # the cpu and gpu profiles decay at 60 % and 80 % of the student's schedule; shifted by the hint stage
    kd_milestones = [f"schedule.milestones=[{hint + round(epochs * 0.6)},{hint + round(epochs * 0.8)}]"]
    t = {
        "pilot": {"ce": method("ce"), "kd": method("kd")},
        "catalogue": {
            "ce": method("ce"),
            "kd": method("kd"),
            "dkd": method("dkd"),
            # DKD's 20-epoch warm-up is 1/12 of mdistiller's 240 epochs but longer than this whole schedule
            "dkd_warmup2": method("dkd", "objective.dkd.warmup=2"),
            "crd": method("crd"),
            "fitnet": method("fitnet", *fitnet),
            # FitNet's epochs (hint + 15) as plain KD, decays at the same epochs: separates the hint from the time
            "kd_fitnet_epochs": method("kd", f"schedule.epochs={epochs + hint}", *kd_milestones),
            "at": method("at"),
            "sp": method("sp"),
            "rkd": method("rkd"),
            "dml": method("dml", "cohort=[{name: resnet20}]"),
            "bss": method("bss"),
        },
        "augmentation": {
            "ce": method("ce"),
            "kd": method("kd"),
            "ce_x2": method("ce", x2),
            "kd_x2": method("kd", x2),
            "kd+tlmixup": method("kd_tlmixup"),
            "kd+tlcutmix": method("kd_tlcutmix"),
            "kd+pick_tent": method("kd", pick % "teacher_entropy"),
            "kd+pick_random": method("kd", pick % "random"),
        },
        "backward": {
            "kd": method("kd"),
            "kd+backward": method("kd_backward"),
            "kd+backward_random": method("kd_backward", "views.0.direction=random"),
        },
        "letkd": {
            "kd": method("kd"),
            "letkd1": method("letkd1", k1),
            "letkd2": method("letkd2", k2),
            "letkd1_nosup": method("letkd1", k1, "objective.letkd_penult.weight=0"),
        },
        "beyond": {},
    }
    for cell, corr in CORRUPTIONS.items():
        common = [
            f"data.corruption={corr}",
            "data.val_fraction=0.1",
            f"teacher.run={teachers}/{cell}/seed0",
            "teacher.recipe=null",
            "teacher.weights=best",
            # live teacher: only the 3 KD runs per cell read it, and a cache of 162 views would cost more to
            # build (~15 min for noise40's 4,500 images) than it saves (~2 min per run)
            "teacher.cache=null",
        ]
        for m in ("ce", "kd", "sp", "dml"):
            extra = ["cohort=[{name: resnet20}]"] if m == "dml" else []
            t["beyond"][f"{cell}-{m}"] = ([PAIR, M.format(m)], [*common, *extra])
    return t


CORRUPTIONS = {
    "noise40": "{noise: {rate: 0.4}, seed: 0}",
    "imb100": "{imbalance: {ratio: 100}, seed: 0}",
}  # one corruption: teacher and students
TEACHER = "recipes/cifar10/teachers/resnet20-cpu.yaml"


@dataclass
class Profile:
    """A scale of the benchmark: the student's training subset, its epochs and the runs' shared overrides."""

    subset: int | None  # student (and corrupted-teacher) training images; None: all 50,000
    epochs: int  # student epochs
    teachers: str  # folder of the teachers' runs
    out: str
    overrides: list[str] = field(default_factory=list)  # every run, teachers included
    student: list[str] = field(default_factory=list)  # every student run
    teacher: list[str] = field(default_factory=list)  # every teacher run (its schedule)
    seeds: list[int] | None = None  # forced seeds (the smoke run's single seed)
    workers: int = 2
    # letKD's penultimate templates: the paper's 4,096 (for 100 classes) cost ~45 min per CPU run here
    letkd_templates: int = 4096
    setting: str = "1 thread per run, {workers} runs at a time"

    def describe(self) -> str:
        n = "all 50,000" if self.subset is None else f"{self.subset:,}"
        return f"{n} training images, {self.epochs} epoch{'s' * (self.epochs > 1)}"


PROFILES = {
    # ~6 h of 2-core wall time in all (RESULTS.md), resumed as often as needed
    # letKD at 512 templates: 51 per class for 10 classes (the paper: 41 per class for CIFAR-100), ~8x cheaper
    "cpu": Profile(5000, 15, "runs/cifar10-cpu/teachers", "runs/bench/cifar10-cpu", letkd_templates=512),
    # every arm end to end in minutes; accuracies are meaningless
    "smoke": Profile(
        2000,  # imbalance 100 needs >= 100 per class
        1,
        "runs/cifar10-cpu-smoke/teachers",
        "runs/bench/cifar10-cpu-smoke",
        overrides=["data.kwargs.train_subset=2000", "data.kwargs.test_subset=500", "schedule.epochs=1"],
        student=["schedule.milestones=[]", "teacher.cache={path: auto, views: 2}"],
        teacher=["schedule.milestones=[]"],
        seeds=[0],
        letkd_templates=64,
    ),
    # benchmarks/gpu/cifar10.sh: all 50,000 images, twice the CPU schedule, 32 cached views, 6 runs at once
    "gpu": Profile(
        None,
        30,
        "runs/cifar10-gpu/teachers",
        "runs/bench/cifar10-gpu",
        student=[
            "data.kwargs.train_subset=null",
            "schedule.epochs=30",
            "schedule.milestones=[18,24]",
            # the exact cache would be 8.1 M teacher passes (minutes of the 9); 32 sampled views per image are
            # 1.6 M, and students then train on those stored views (kdlab cache: sampled mode)
            "teacher.cache={path: auto, views: 32}",
            "data.eval_batch_size=4096",
        ],
        teacher=["schedule.epochs=30", "schedule.milestones=[16,24]"],
        workers=6,
        setting="one GPU shared by {workers} runs at a time",
    ),
}


def train_teachers(data: list[str], prof: Profile, beyond: bool) -> None:
    """The clean teacher (full training split) and, for ``beyond``, resnet20 on the student's corrupted subset,
    early-stopped on its validation split. Finished ones are reused."""
    from kdlab.engine import run_recipe
    from kdlab.recipe import load_recipe

    jobs = [("resnet20", [*data, *prof.overrides, *prof.teacher])]
    if beyond:
        for cell, corr in CORRUPTIONS.items():
            subset = "null" if prof.subset is None else prof.subset
            jobs.append(
                (
                    cell,
                    [
                        *data,
                        *prof.overrides,
                        *prof.teacher,
                        f"data.kwargs.train_subset={subset}",
                        f"data.corruption={corr}",
                        "data.val_fraction=0.1",
                    ],
                )
            )
    for name, over in jobs:
        run_recipe(load_recipe([TEACHER], [*over, f"name={name}", f"out={prof.teachers}"]), quiet=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="pilot,catalogue,augmentation,backward,letkd,beyond")
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg", help="folder of the two .tar.gz archives")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="cpu (the recorded tables), gpu, smoke")
    p.add_argument("--smoke", action="store_true", help="same as --profile smoke (2,000 images, 1 epoch, seed 0)")
    p.add_argument("--out", default=None, help="results folder (default: the profile's)")
    p.add_argument("--workers", type=int, default=None, help="runs at a time (default: the profile's)")
    p.add_argument("--budget-s", type=float, default=None, help="start no new run after this many seconds")
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    prof = PROFILES["smoke" if a.smoke else a.profile]
    lo, _, hi = a.seeds.partition("-")
    seeds = prof.seeds or (list(range(int(lo), int(hi) + 1)) if hi else [int(s) for s in a.seeds.split(",")])
    out, workers = a.out or prof.out, a.workers or prof.workers
    deadline = None if a.budget_s is None else time.time() + a.budget_s
    data = [f"data.kwargs.root={Path(a.data).resolve()}"]
    names = a.tables.split(",")
    train_teachers(data, prof, "beyond" in names)
    clean = [f"teacher.run={prof.teachers}/resnet20/seed0", "teacher.recipe=null"]
    common = [*data, *prof.overrides, *clean, "train.tensorboard=false", "train.progress=false", *prof.student]
    for name in names:
        table = tables(prof.epochs, prof.teachers, prof.letkd_templates)[name]
        arms = {k: (f, [*common, *o]) for k, (f, o) in table.items()}
        started = time.time()
        # the plain CE and KD arms are the same runs in every table: trained once, under pilot/
        homes = {k: f"{out}/pilot" for k in ("ce", "kd") if k in arms}
        dirs = run_arms(arms, seeds, f"{out}/{name}", workers=workers, force=a.force, deadline=deadline, homes=homes)
        if not dirs:
            print(f"{name}: no run finished within the budget")
            continue
        base = "ce" if "ce" in arms else ("kd" if "kd" in arms else None)
        report(
            dirs,
            f"{out}/{name}",
            base,
            started=started,
            setting=prof.setting.format(workers=workers),
            title=f"CIFAR-10 (JPEG copy), {name}: resnet20 -> resnet8, {prof.describe()}"
            + (" (SMOKE)" if prof.seeds else "")
            + f", seeds {','.join(map(str, seeds))}",
        )


if __name__ == "__main__":
    main()
