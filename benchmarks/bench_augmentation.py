"""KD thrives on data augmentation (Wang et al.), at CPU scale: scikit-learn digits, 200 training images.

Teacher: smallcnn ×2 trained on the full digits training split (1,297 images, ±1-pixel shifts). Students:
smallcnn ×0.25 (3.7 k parameters) on a fixed stratified 200-image subset, SGD lr 0.05, batch 64,
multistep ×0.1 at 62.5/75/87.5 % of the epochs, α=0.9 / τ=4 as in the paper, ±1-pixel shifts as the
standard augmentation (no flips: digits are not flip-invariant). Arms: CE, KD, KD ×4 epochs, KD + TLmixup,
KD + TLCutMix, KD + CutMixPick by each criterion, and the random-pick control from the same pool.

Two training structures (the research note's pilot found that they decide the sign of the effect):
``--structure authors`` (separate student passes for x and x', no clipping — the authors' code) and
``--structure stable`` (one concatenated pass, gradient-norm clipping at 5; our deviation, logged).

    python benchmarks/bench_augmentation.py --structure stable --seeds 0-3
"""

from __future__ import annotations

import time

from _runner import cli, report, run_arms

PAIR = ["recipes/digits/pair.yaml", "recipes/methods/kd.yaml"]


def digits200(epochs: int, structure: str) -> list[str]:
    """The digits-200 KD setting shared with bench_backward.py, as overrides of the digits pair."""
    m = [round(epochs * f) for f in (0.625, 0.75, 0.875)]
    base = [
        "data.kwargs={train_subset: 200}",
        "data.augment=[{name: crop, padding: 1}]",
        f"schedule.epochs={epochs}",
        f"schedule.milestones={m}",
        "objective={ce: {weight: 0.1}, kd: {weight: 0.9, tau: 4}}",
    ]
    if structure == "stable":
        base += ["train.concat_views=true", "train.grad_clip=5"]
    return base


def arms(epochs: int, structure: str) -> dict:
    base = digits200(epochs, structure)
    pick = "views=[{name: cutmix_pick, criterion: %s}]"
    return {
        "ce": (PAIR, [*base, "objective={ce: {weight: 1.0}}"]),
        "kd": (PAIR, base),
        "kd_x4": (PAIR, [*base, "schedule.multiplier=4"]),
        "kd+tlmixup": (PAIR, [*base, "views=[mixup]"]),
        "kd+tlcutmix": (PAIR, [*base, "views=[cutmix]"]),
        "kd+pick_tent": (PAIR, [*base, pick % "teacher_entropy"]),
        "kd+pick_sent": (PAIR, [*base, pick % "student_entropy"]),
        "kd+pick_kl": (PAIR, [*base, pick % "kl"]),
        "kd+pick_random": (PAIR, [*base, pick % "random"]),
    }


if __name__ == "__main__":
    import argparse
    import sys

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--structure", choices=["authors", "stable"], default="stable")
    extra.add_argument("--epochs", type=int, default=60)
    e, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    a = cli(__doc__.splitlines()[0])
    out = a.out or f"runs/bench/augmentation-{e.structure}-{e.epochs}"
    t0 = time.time()
    dirs = run_arms(arms(e.epochs, e.structure), a.seed_list, out, workers=a.workers, force=a.force)
    report(
        dirs,
        out,
        "kd",
        f"Digits-200, KD + augmentation ({e.structure} structure, {e.epochs} epochs, seeds {a.seeds})",
        t0,
    )
