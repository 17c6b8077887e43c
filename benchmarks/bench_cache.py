"""Teacher cache: is KD as cheap as training the student alone? One process, every arm interleaved.

For each CIFAR-shape pair (batch 64, 3×32×32, 100 classes; synthetic images, since only time is measured) it
times one training epoch of
  student   kdlab, CE only (the student alone)
  cached    kdlab KD, the teacher served from a soft-label cache
  live      kdlab KD, the teacher run on every batch
  plain     a plain PyTorch KD loop written the way RepDistiller's `train_distill` is (teacher forward under
            no_grad, student forward, CE + KL, backward, SGD step, `loss.item()` per step), NCHW, fp32,
            on the same in-memory tensors with the same batched crop/flip
in round-robin order, `--repeats` times, and prints the median epoch time and the ratios. It also times the
cache build (teacher forwards per second over the enumerated views) and derives the one-time cost of a
162-view cache of the 50,000 CIFAR training images and the break-even number of student runs.

    python benchmarks/bench_cache.py                 # both pairs, 20 steps/epoch, 5 repeats
    python benchmarks/bench_cache.py --smoke         # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from plain_kd import plain_kd_rate

PAIRS = {"resnet56-resnet20": ("resnet56", "resnet20"), "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4")}
CLASSES, SHAPE, BATCH = 100, (3, 32, 32), 64


def register_data(n: int) -> None:
    from kdlab.data.base import Dataset, Split
    from kdlab.registry import DATASETS

    if "bench_cifar_shape" in DATASETS:
        return

    @DATASETS.register("bench_cifar_shape", description="synthetic CIFAR-100-shaped images (timing only)")
    def _make(n: int = n) -> Dataset:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, *SHAPE, generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
        t = Split(x[:BATCH], y[:BATCH])
        return Dataset("bench_cifar_shape", Split(x, y), t, CLASSES, (0.5,) * 3, (0.25,) * 3)


def recipe(out: Path, name: str, teacher: str, student: str, arm: str, n: int):
    from kdlab.recipe import load_recipe

    kd = arm != "student"
    data = {
        "name": name,
        "out": str(out),
        "seed": 0,
        "data": {
            "name": "bench_cifar_shape",
            "kwargs": {"n": n},
            "batch_size": BATCH,
            "augment": ["crop_flip"],
            "eval_batch_size": BATCH,
        },
        "student": {"name": student},
        "objective": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "tau": 4}} if kd else {"ce": {}},
        "schedule": {"epochs": 2, "milestones": []},
        "train": {"tensorboard": False, "progress": False, "eval_every": 100},
    }
    if kd:
        data["teacher"] = {"model": {"name": teacher}}
        if arm == "cached":
            data["teacher"]["cache"] = {"views": 2}  # built on first use (under $KDLAB_CACHE), then reused
    return load_recipe(data)


def kdlab_epoch(out: Path, teacher: str, student: str, arm: str, n: int, k: int) -> float:
    """Seconds of the second epoch of a fresh 2-epoch run (the first warms up allocators and caches)."""
    from kdlab.engine import run_recipe

    name = f"{arm}-{student}-{k}"
    run_recipe(recipe(out, name, teacher, student, arm, n), quiet=True)
    lines = (out / name / "seed0" / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["time/train_s"]


def plain_epoch(teacher_name: str, student_name: str, n: int) -> float:
    """Seconds of one epoch of the plain RepDistiller-style KD loop (plain_kd.py) on the same shapes."""
    return n / plain_kd_rate("cpu", n, BATCH, teacher_name, student_name)


def build_rate(teacher_name: str, images: int) -> float:
    """Teacher forwards per second while building an enumerated (162-view) cache."""
    from kdlab.engine.batch import Pipeline
    from kdlab.models import build_model
    from kdlab.teachers.live import LiveTeacher
    from kdlab.views.basic import CropFlip

    torch.manual_seed(0)
    teacher = LiveTeacher(build_model(teacher_name, num_classes=CLASSES, input_shape=SHAPE))
    teacher.to("cpu", torch.channels_last)
    p = Pipeline([CropFlip()], torch.tensor((0.5,) * 3), torch.tensor((0.25,) * 3), SHAPE, torch.channels_last)
    x, rows = torch.rand(images, *SHAPE), p.enumerate()
    teacher(p.at(x, rows[0]))  # warm-up
    t0 = time.perf_counter()
    for v in range(len(rows)):
        teacher(p.at(x, rows[v]))
    return images * len(rows) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--steps", type=int, default=20, help="steps of batch 64 per timed epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("KDLAB_THREADS", "0") or 0) or None)
    ap.add_argument("--build-images", type=int, default=64, help="images whose 162 views time the cache build")
    ap.add_argument("--smoke", action="store_true", help="2 steps, 1 repeat, 4 build images")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.repeats, args.build_images = 2, 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.steps * BATCH
    register_data(n)
    print(
        f"# Teacher cache benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"# one epoch = {args.steps} steps of batch {BATCH} (3x32x32, {CLASSES} classes); median of "
        f"{args.repeats} interleaved repeats; kdlab runs use its CPU defaults (fp32, channels_last)\n"
    )
    print(
        "| pair | student-only s/epoch | cached KD | live KD | plain loop | cached / student | cached vs plain "
        "| live vs plain | build: teacher forwards/s | 162-view cache of 50,000 images | break-even (240-epoch runs) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KDLAB_CACHE"] = str(Path(tmp) / "cache")
        for pair in args.pairs.split(","):
            teacher, student = PAIRS[pair]
            out = Path(tmp) / pair
            times: dict[str, list[float]] = {a: [] for a in ("student", "cached", "live", "plain")}
            for k in range(args.repeats):  # round-robin: drifts of machine load hit every arm alike
                for arm in ("student", "cached", "live"):
                    times[arm].append(kdlab_epoch(out, teacher, student, arm, n, k))
                times["plain"].append(plain_epoch(teacher, student, n))
            m = {a: statistics.median(v) for a, v in times.items()}
            rate = build_rate(teacher, args.build_images)
            build_s = 50_000 * 162 / rate  # a full CIFAR training split, every (dx, dy, flip)
            saved_per_run = 240 * (m["live"] - m["cached"]) * 50_000 / n  # the standard protocol: 240 epochs
            runs = build_s / saved_per_run if saved_per_run > 0 else float("inf")
            print(
                f"| {pair} | {m['student']:.2f} | {m['cached']:.2f} | {m['live']:.2f} | {m['plain']:.2f} | "
                f"{m['cached'] / m['student']:.3f} | {m['plain'] / m['cached']:.2f}x | {m['plain'] / m['live']:.2f}x "
                f"| {rate:.0f} | {build_s / 3600:.2f} h | {runs:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
