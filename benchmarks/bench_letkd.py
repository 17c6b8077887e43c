"""letKD on digits (CPU, minutes): the small-scale check of the research notes (seeds-beyond-kdlayer.md §2.6).

Pair: recipes/digits/pair.yaml (teacher smallcnn x2 trained on the full digits training split; student smallcnn
x0.25) with the student trained on a stratified 300-image subset (data.kwargs.train_subset=300), so that
distillation matters. letKD layers and targets scaled down as in recipes/digits/letkd{1,2}.yaml (K = 64 templates
after relu2, mean target entropy 1.5 nats; letKD-2 adds 4 sub-classes per class after relu1, LDA 9 components).

Arms (paired seeds):
- student: CE only.  kd: Hinton KD (CE 0.1 + KD 0.9, tau 4).
- letkd1, letkd2: the methods.
- letkd1_a0: layer present and supervised, alpha = 0 (QuEST-style; Table 5 row "- / penultimate (0)").
- letkd1_nosup: layer present, alpha = 1, no KL supervision (Table 6's capacity control).
- letkd2_ai0: letKD-2 with alpha_inter = 0 (Table 5 row "inter (0) / penult (1)").
- letkd1_k16, letkd1_k256: K sweep (64 is the default here).
- letkd1_tau1: the paper's tau = 1 on raw teacher features instead of the entropy-calibrated tau.

    .venv/bin/python benchmarks/bench_letkd.py            # seeds 0-4, 2 workers
"""

from __future__ import annotations

import time

from _runner import cli, report, run_arms

PAIR = "recipes/digits/pair.yaml"
L1 = [PAIR, "recipes/digits/letkd1.yaml"]
L2 = [PAIR, "recipes/digits/letkd2.yaml"]
SUB = ["data.kwargs.train_subset=300", "train.tensorboard=false", "train.progress=false"]

ARMS = {
    "student": ([PAIR], SUB),
    "kd": ([PAIR, "recipes/methods/kd.yaml"], SUB),
    "letkd1": (L1, SUB),
    "letkd2": (L2, SUB),
    "letkd1_a0": (L1, [*SUB, "student.insert.0.kwargs.alpha=0"]),
    "letkd1_nosup": (L1, [*SUB, "objective.letkd_penult.weight=0"]),
    "letkd2_ai0": (L2, [*SUB, "student.insert.0.kwargs.alpha=0"]),
    "letkd1_k16": (L1, [*SUB, "student.insert.0.kwargs.templates=16"]),
    "letkd1_k256": (L1, [*SUB, "student.insert.0.kwargs.templates=256"]),
    "letkd1_tau1": (L1, [*SUB, "objective.letkd_penult.target_entropy=null"]),
}


def main() -> None:
    a = cli("letKD ablations on digits (300 training images), CPU", default_seeds="0-4")
    out = a.out or "runs/bench/letkd"
    started = time.time()
    dirs = run_arms(ARMS, a.seed_list, out, workers=a.workers, force=a.force)
    report(
        dirs,
        out,
        baseline="student",
        started=started,
        title="letKD on digits (smallcnn x2 -> x0.25, 300 training images, K = 64, 30 epochs)",
    )


if __name__ == "__main__":
    main()
