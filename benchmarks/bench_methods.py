"""Every method of the catalogue on a CPU pair: resnet20 -> resnet8 on scikit-learn digits, 30 epochs.

Each arm is the method's own recipe file from recipes/methods/ on top of recipes/digits/resnet20-resnet8.yaml,
with only what the CPU scale needs changed: init/hint stages of the two-stage methods (FitNet, FSP, AB, FT)
shortened to 5 epochs, DML's cohort peer set to the teacher's architecture (resnet20, from scratch), and
multi-teacher KD given two teachers (resnet20 and smallcnn ×2). A check that every method trains end to end
on real data with its paper defaults — not a ranking: digits is near its ceiling for every method.

    python benchmarks/bench_methods.py --seeds 0-2
"""

from __future__ import annotations

import time

from _runner import cli, report, run_arms

PAIR = "recipes/digits/resnet20-resnet8.yaml"
TWO_STAGE = ["fitnet", "fsp", "ab", "ft"]
METHODS = [
    "ce",
    "kd",
    "bss",
    "fitnet",
    "fsp",
    "at",
    "ab",
    "rkd",
    "sp",
    "dml",  # the nine of Sarfraz et al.
    "ft",
    "vid",
    "cc",
    "pkt",
    "nst",
    "crd",
    "reviewkd",
    "dkd",
    "dist",
    "ls_kd",
    "mlkd",
    "multi_teacher",
]
EXTRA = {
    "dml": ["cohort=[{name: resnet20}]"],
    "multi_teacher": [
        "teacher=[{run: runs/digits/teachers/resnet20/seed0, recipe: recipes/digits/teacher_resnet20.yaml},"
        " {run: runs/digits/teachers/teacher/seed0, recipe: recipes/digits/teacher.yaml}]"
    ],
}


def arms() -> dict:
    out = {}
    for m in METHODS:
        overrides = list(EXTRA.get(m, []))
        if m in TWO_STAGE:
            overrides.append("stages.0.epochs=5")
        out[m] = ([PAIR, f"recipes/methods/{m}.yaml"], overrides)
    return out


if __name__ == "__main__":
    a = cli(__doc__.splitlines()[0], default_seeds="0-2")
    out = a.out or "runs/bench/methods"
    t0 = time.time()
    dirs = run_arms(arms(), a.seed_list, out, workers=a.workers, force=a.force)
    report(dirs, out, "ce", f"Method catalogue, digits resnet20 -> resnet8, 30 epochs (seeds {a.seeds})", t0)
