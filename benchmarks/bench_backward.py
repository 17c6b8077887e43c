"""Backward-pass auxiliary samples (Jafari et al.; our reconstruction) against its control, at CPU scale.

Same digits-200 setting as bench_augmentation.py (teacher smallcnn ×2 on all 1,297 training images,
student smallcnn ×0.25 on 200). Arms at equal extra compute: KD; KD + auxiliary samples along the gradient
of KL(T‖S) w.r.t. the input (K=1, η=0.1, λ_aux=0.25); KD + auxiliary samples along a random direction of
the same norm (same passes). One concatenated student pass and gradient clipping at 5 (the research note's
pilot collapsed without it). Reported: top-1, teacher–student agreement and KL(T‖S) on the test split.

    python benchmarks/bench_backward.py --seeds 0-3
"""

from __future__ import annotations

import time

from _runner import cli, report, run_arms
from bench_augmentation import PAIR, digits200


def arms(epochs: int) -> dict:
    base = digits200(epochs, "stable")
    view = "views=[{name: backward, direction: %s, eta: 0.1, steps: 1, weight: 0.25}]"
    return {
        "kd": (PAIR, base),
        "kd+backward": (PAIR, [*base, view % "gradient"]),
        "kd+random_dir": (PAIR, [*base, view % "random"]),
    }


if __name__ == "__main__":
    import argparse
    import sys

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--epochs", type=int, default=60)
    e, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    a = cli(__doc__.splitlines()[0])
    out = a.out or f"runs/bench/backward-{e.epochs}"
    t0 = time.time()
    dirs = run_arms(arms(e.epochs), a.seed_list, out, workers=a.workers, force=a.force)
    report(
        dirs, out, "kd", f"Digits-200, KD + backward-pass auxiliary samples ({e.epochs} epochs, seeds {a.seeds})", t0
    )
