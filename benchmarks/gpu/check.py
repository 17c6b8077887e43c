"""The GPU check of issue 12, as one script (at most 8 minutes on one H200; benchmarks/gpu/README.md).

1. tests: the suite's CUDA-marked tests (``pytest -m cuda``; they skip without CUDA).
2. throughput: images/s of one training epoch (the second of a fresh run; the first warms up, compiles and
   builds caches) for resnet56->resnet20 and resnet32x4->resnet8x4 at batch 64 and 512, CIFAR-10-shaped
   synthetic data on the device:
     plain    a plain PyTorch KD loop written the way RepDistiller's ``train_distill`` is: teacher forward
              under no_grad, student forward, CE + tau^2 KL, backward, SGD step, ``loss.item()`` and top-1
              ``.item()`` per step for its meters; fp32, NCHW, the same in-memory batches and crop/flip;
     student  kdlab, CE only (the student alone);
     live     kdlab KD, the teacher run on every batch;
     cached   kdlab KD, the teacher's soft labels from a cache (2 stored views per image);
   kdlab arms eager and, for the pairs in --compile-pairs, with ``train.compile`` (timed last, after the
   end-to-end run, while time is left: compilation is the slowest part).
3. end to end: a resnet56 teacher, then a KD resnet20 student, on CIFAR-10 (JPEG copy) for a short schedule;
   prints the student's accuracy.
4. projection: the 240-epoch batch-64 protocol's wall time from the student's measured epoch time (and from
   the best kdlab arm of the throughput table, training only).

Tables go to --out (``$OUT`` under the device tool). ``--device cpu --smoke`` dry-runs everything on a CPU in
about two minutes (tiny steps, a data subset, no compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from plain_kd import plain_kd_rate  # noqa: E402  (the one baseline loop, shared with bench_cache.py)

PAIRS = {"resnet56-resnet20": ("resnet56", "resnet20"), "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4")}
CLASSES, SHAPE = 10, (3, 32, 32)
T0 = time.monotonic()


def left(budget: float) -> float:
    return budget - (time.monotonic() - T0)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ 1. tests
def run_tests(out: Path, timeout: float) -> str:
    # only the files that carry the marker: collecting the whole suite would import optional extras
    files = [str(f) for f in sorted((ROOT / "tests").glob("test_*.py")) if "mark.cuda" in f.read_text()]
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *files, "-p", "no:cacheprovider", "-rs"]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10, timeout))
        text = p.stdout + p.stderr
        status = f"exit {p.returncode}"
    except subprocess.TimeoutExpired as e:
        text, status = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timed out"
    (out / "tests.txt").write_text(text)
    last = [line for line in text.splitlines() if line.strip() and " in " in line][-1:] or [""]
    return f"CUDA-marked tests: {status}: {last[0]}"


# ------------------------------------------------------------------------------------------------ 2. throughput
def register_data(n: int, batch: int) -> str:
    from kdlab.data.base import Dataset, Split
    from kdlab.registry import DATASETS

    name = f"gpucheck_{n}"
    if name not in DATASETS:

        @DATASETS.register(name, description="synthetic CIFAR-10-shaped images (timing only)")
        def _make() -> Dataset:
            g = torch.Generator().manual_seed(0)
            x, y = torch.rand(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
            return Dataset(name, Split(x, y), Split(x[:batch], y[:batch]), CLASSES, (0.5,) * 3, (0.25,) * 3)

    return name


def kdlab_rate(
    out: Path, device: str, data: str, n: int, batch: int, teacher: str, student: str, arm: str, compiled: bool
) -> float:
    """Images/s of the second epoch of a fresh 2-epoch kdlab run."""
    from kdlab.engine import run_recipe
    from kdlab.recipe import load_recipe

    kd = arm != "student"
    name = f"{arm}-{student}-{batch}-{'c' if compiled else 'e'}"
    r = {
        "name": name,
        "out": str(out),
        "seed": 0,
        "data": {
            "name": data,
            "batch_size": batch,
            "eval_batch_size": batch,
            "augment": ["crop_flip"],
            "drop_last": True,
        },
        "student": {"name": student},
        "objective": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "tau": 4}} if kd else {"ce": {}},
        "schedule": {"epochs": 2, "milestones": []},
        "train": {"device": device, "tensorboard": False, "progress": False, "eval_every": 100, "compile": compiled},
    }
    if kd:
        r["teacher"] = {"model": {"name": teacher}}
        if arm == "cached":
            r["teacher"]["cache"] = {"views": 2}
    run_recipe(load_recipe(r), existing="overwrite", quiet=True)
    lines = (out / name / "seed0" / "metrics.jsonl").read_text().splitlines()
    return n / json.loads(lines[-1])["time/train_s"]


class Throughput:
    """Images/s per (pair, batch) and arm; the table is rewritten to ``throughput.md`` after every row, so a
    run stopped by its time limit still leaves what it measured."""

    HEAD = (
        "| pair | batch | plain loop img/s | student-only (eager / compiled) | kdlab live KD | kdlab cached KD "
        "| live KD vs plain | cached KD vs student-only |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )

    def __init__(self, args, out: Path, tmp: Path):
        self.args, self.out, self.tmp = args, out, tmp
        self.r: dict[tuple[str, int], dict[str, float | None]] = {}

    def measure(self, compiled: bool) -> None:
        """Eager: the plain loop and the three kdlab arms for every pair and batch, while more than
        --reserve-s is left. Compiled: the kdlab arms of --compile-pairs, while more than 90 s is left."""
        args = self.args
        pairs = args.pairs.split(",") if not compiled else [p for p in args.compile_pairs.split(",") if p]
        for batch in args.batches:
            steps = args.steps if batch <= 64 else max(2, args.steps // 4)
            n = steps * batch
            data = register_data(n, batch)
            for pair in pairs:
                teacher, student = PAIRS[pair]
                r = self.r.setdefault((pair, batch), {})
                for arm in (("plain",) if not compiled else ()) + ("student", "live", "cached"):
                    key = f"{arm}{'+c' if compiled else ''}"
                    if left(args.budget_s) < (90 if compiled else args.reserve_s):
                        log(f"{pair} b{batch} {key}: skipped (time budget)")
                        continue
                    try:
                        r[key] = (
                            plain_kd_rate(args.device, n, batch, teacher, student, CLASSES)
                            if arm == "plain"
                            else kdlab_rate(
                                self.tmp / "tp", args.device, data, n, batch, teacher, student, arm, compiled
                            )
                        )
                    except Exception as e:  # noqa: BLE001 - one failed arm must not lose the table
                        log(f"{pair} b{batch} {key}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                        r[key] = None
                log(f"{pair} batch {batch}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items() if v))
                (self.out / "throughput.md").write_text(self.table() + "\n")

    def table(self) -> str:
        rows = []
        for (pair, batch), r in self.r.items():
            fmt = lambda k, r=r: f"{r[k]:.0f}" if r.get(k) else "–"  # noqa: E731
            ratio = lambda a, b, r=r: f"{r[a] / r[b]:.2f}" if r.get(a) and r.get(b) else "–"  # noqa: E731
            rows.append(
                f"| {pair} | {batch} | {fmt('plain')} | {fmt('student')} / {fmt('student+c')} | "
                f"{fmt('live')} / {fmt('live+c')} | {fmt('cached')} / {fmt('cached+c')} | "
                f"{ratio('live', 'plain')} / {ratio('live+c', 'plain')} | "
                f"{ratio('cached', 'student')} / {ratio('cached+c', 'student+c')} |"
            )
        return self.HEAD + "\n".join(rows)

    def projections(self) -> list[str]:
        out = []
        for (pair, batch), r in self.r.items():
            kd = {k: v for k, v in r.items() if k.startswith(("live", "cached")) and v}
            if batch == 64 and kd:
                k = max(kd, key=kd.get)
                out.append(
                    f"projection from the throughput table, {pair}, fastest kdlab KD arm at batch 64 ({k}): "
                    f"{240 * 50_000 / kd[k] / 60:.1f} min of training for 240 epochs of 50,000 images"
                )
        return out


# ------------------------------------------------------------------------------------------------ 3-4. end to end
def end_to_end(args, out: Path, tmp: Path) -> str:
    from kdlab.engine import run_recipe
    from kdlab.recipe import load_recipe

    root = Path(args.data).resolve()
    if not list(root.glob("*.tar.gz")):
        return f"end to end: skipped, no archives in {root} (copy /work/shared/data/cifar10-jpeg/*.tar.gz there)"
    common = [
        f"data.kwargs.root={root}",
        f"train.device={args.device}",
        "train.progress=false",
        "train.tensorboard=false",
        f"out={tmp / 'e2e'}",
    ]
    if args.smoke:
        common += ["data.kwargs.train_subset=512", "data.kwargs.test_subset=256"]
    te, se = args.teacher_epochs, args.student_epochs
    t_recipe = load_recipe(
        [str(ROOT / "recipes/cifar10/teachers/resnet56.yaml")],
        common
        + [
            f"schedule.epochs={te}",
            f"schedule.milestones=[{max(1, te * 3 // 4)}]",
            "data.batch_size=128",
            "optim.lr=0.1",
        ],
    )
    log(f"teacher resnet56: {te} epochs")
    t = run_recipe(t_recipe, existing="overwrite", quiet=True)
    log(f"teacher top-1 {100 * t['final'].get('test/top1', float('nan')):.2f}")
    s_recipe = load_recipe(
        [str(ROOT / "recipes/cifar10/resnet56-resnet20.yaml"), str(ROOT / "recipes/methods/kd.yaml")],
        common
        + [
            f"teacher.run={t_recipe.run_dir()}",
            f"schedule.epochs={se}",
            f"schedule.milestones=[{max(1, se * 3 // 4)}]",
            "data.batch_size=64",
            f"train.compile={'true' if args.e2e_compile else 'false'}",
        ],
    )
    log(f"student resnet20 (KD, batch 64): {se} epochs")
    s = run_recipe(s_recipe, existing="overwrite", quiet=True)
    lines = [json.loads(x) for x in (s_recipe.run_dir() / "metrics.jsonl").read_text().splitlines()]
    epoch_s = statistics.median(r["time/epoch_s"] for r in lines[1:] or lines)
    train_s = statistics.median(r["time/train_s"] for r in lines[1:] or lines)
    n_train = 50_000
    scale = n_train / (512 if args.smoke else n_train)  # the smoke run trains on a 512-image subset
    proj_min = 240 * epoch_s * scale / 60
    text = (
        f"teacher resnet56, {te} epochs (batch 128): top-1 {100 * t['final'].get('test/top1', 0):.2f}%\n"
        f"student resnet20, KD, {se} epochs (batch 64{', compiled' if args.e2e_compile else ''}): top-1 "
        f"{100 * s['final'].get('test/top1', 0):.2f}% (best {100 * s['best'].get('test/top1', 0):.2f}%)\n"
        f"measured epoch (median after the first): {epoch_s:.2f} s with evaluation, {train_s:.2f} s training"
        f"{' (512-image subset)' if args.smoke else ''}\n"
        f"projected 240-epoch batch-64 protocol (resnet56->resnet20 KD, live teacher): {proj_min:.1f} min\n"
    )
    (out / "e2e.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="a CPU dry run: tiny steps, a data subset, no compile")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks/gpu/out"))
    ap.add_argument("--data", default=str(ROOT / "data/cifar10-jpeg"), help="folder with the two .tar.gz archives")
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--compile-pairs", default="resnet56-resnet20", help="pairs also timed with train.compile")
    ap.add_argument("--batches", default="64,512")
    ap.add_argument("--steps", type=int, default=60, help="steps per timed epoch at batch 64 (a quarter at 512)")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--student-epochs", type=int, default=8)
    ap.add_argument("--e2e-compile", action="store_true")
    ap.add_argument("--budget-s", type=float, default=450, help="stop starting new arms past this")
    ap.add_argument("--reserve-s", type=float, default=200, help="seconds kept for the end-to-end run")
    ap.add_argument("--skip", default="", help="comma list of: tests, throughput, e2e")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.batches, args.compile_pairs = 2, "8,16", ""
        args.teacher_epochs, args.student_epochs, args.reserve_s = 1, 2, 0
    args.batches = [int(b) for b in args.batches.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    os.environ.setdefault("KDLAB_CACHE", str(Path(tempfile.gettempdir()) / "kdlab-gpu-check-cache"))
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    head = (
        f"# kdlab GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {name}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPU cores{' (smoke)' if args.smoke else ''}\n"
    )
    print(head, flush=True)
    parts = [head]
    if "tests" not in skip:
        log("1. CUDA-marked tests")
        parts.append(run_tests(out, min(90, left(args.budget_s) - args.reserve_s)))
        print(parts[-1], flush=True)

    def write() -> None:  # after every section: a run stopped by its limit keeps what it has
        (out / "summary.md").write_text("\n\n".join(parts + [f"total {time.monotonic() - T0:.0f} s"]) + "\n")

    write()
    with tempfile.TemporaryDirectory() as tmp:
        tp = Throughput(args, out, Path(tmp))
        if "throughput" not in skip:  # eager arms first, then the end-to-end run, then compiled arms
            log("2. throughput, eager")
            tp.measure(compiled=False)
            print(tp.table(), flush=True)
        if "e2e" not in skip:
            log("3. end to end on CIFAR-10 (JPEG copy)")
            try:
                parts.append("## End to end\n\n" + end_to_end(args, out, Path(tmp)))
            except Exception as e:  # noqa: BLE001 - report it with the rest
                parts.append(f"## End to end\n\nfailed: {type(e).__name__}: {e}")
            print(parts[-1], flush=True)
            write()
        if "throughput" not in skip:
            log("2b. throughput, compiled")
            tp.measure(compiled=True)
            parts.append("## Throughput (images/s, epoch 2 of a fresh run)\n\n" + tp.table())
            parts.extend(tp.projections())
            print("\n".join([tp.table(), *tp.projections()]), flush=True)
    write()
    log("done")


if __name__ == "__main__":
    main()
