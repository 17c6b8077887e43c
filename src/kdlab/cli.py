"""The ``kdlab`` command: run | list | report | study | demo | diagnose | cache | export | predict | eval | recipes.

User errors (KDLabError) are printed as one line with exit status 2, never as a traceback. Each sub-command
imports its modules on first use, so `kdlab --help` and argument errors answer without importing torch.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from kdlab.errors import KDLabError
from kdlab.seeds import parse_seeds

DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _files_and_overrides(items: list[str], missing: str) -> tuple[list[str], list[str]]:
    """Positional arguments: recipe files (merged left to right) and key.path=value overrides."""
    from kdlab.recipe import RECIPE_SUFFIXES

    files = [a for a in items if a.endswith(RECIPE_SUFFIXES) and "=" not in a]
    if not files:
        raise KDLabError(missing)
    return files, [a for a in items if a not in files]


def cmd_run(args: argparse.Namespace) -> int:
    from kdlab.engine import resume_run, run_recipe
    from kdlab.engine.progress import current_run
    from kdlab.recipe import load_recipe

    if args.resume:
        current_run(args.resume)
        resume_run(args.resume, wait=args.wait)
        return 0
    files, overrides = _files_and_overrides(
        args.recipe, "kdlab run needs at least one RECIPE file (or --resume RUN_DIR)"
    )
    if args.out:
        overrides.append(f"out={args.out}")
    base = load_recipe(files, overrides)
    existing = "overwrite" if args.force else "resume"
    if args.together:
        from kdlab.engine.progress import silenced
        from kdlab.engine.together import run_together

        recipes = [base.model_copy(update={"seed": seed}) for seed in args.seeds or [base.seed]]
        with silenced():  # several seeds at once: one line per finished seed instead of bars
            for r, s in zip(recipes, run_together(recipes, existing=existing, wait=args.wait, quiet=True)):
                print(
                    f"{r.name} seed {r.seed}: top-1 last {100 * s['final'].get('test/top1', float('nan')):.2f} "
                    f"({s['wall_s']:.1f} s) -> {r.run_dir()}"
                )
        return 0
    for seed in args.seeds or [base.seed]:
        recipe = base.model_copy(update={"seed": seed})
        current_run(recipe.run_dir())
        run_recipe(recipe, existing=existing, wait=args.wait)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kdlab.catalogue import REGISTRIES, fields, markdown, params_model
    from kdlab.registry import options

    kinds = [args.what] if args.what else list(REGISTRIES)
    if args.markdown:
        print(markdown(kinds), end="")
        return 0
    console = Console()
    for kind in kinds:
        table = Table(title=kind, show_lines=args.verbose)
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("paper")
        if kind == "datasets":  # data.kwargs are free-form: show each builder's options and defaults
            table.add_column("options (data.kwargs)")
        elif args.verbose:
            table.add_column("parameters")
        for e in REGISTRIES[kind].entries():
            extra = [", ".join(options(e.obj))] if kind == "datasets" else []
            model = params_model(e.obj)
            if args.verbose and kind != "datasets":
                extra = [
                    "\n".join(f"{n}={d}" + (f": {desc}" if desc else "") for n, d, desc in fields(model))
                    if model is not None
                    else ", ".join(options(e.obj))
                ]
            table.add_row(e.name, e.description, e.paper, *extra)
        console.print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdlab.report import write_report

    out = write_report(args.runs, args.out, baseline=args.baseline)
    print(out["markdown"])
    print(f"\nwritten: {', '.join(str(f) for f in out['files'])}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from kdlab.study import run_study, study_report

    if args.report:
        print(study_report(args.study, out=args.out)["markdown"])
        return 0
    result = run_study(args.study, workers=args.workers, dry_run=args.dry_run, out=args.out, overrides=args.overrides)
    if not args.dry_run:
        print(
            f"trained {result['trained']}, reused {result['reused']} finished runs"
            + (f"; teacher caches {result['cache_s']:.1f} s" if result.get("cache_s") else "")
        )
        print(result["report"]["markdown"])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdlab.demo import run_demo

    run_demo(out=args.out, seeds=args.seeds, force=args.force)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    import json

    from kdlab.engine.diagnose import t_stddev
    from kdlab.recipe import load_recipe

    files, overrides = _files_and_overrides(args.recipe, "kdlab diagnose needs at least one RECIPE file")
    out = t_stddev(load_recipe(files, overrides), epochs=args.epochs, group=args.group, student=args.student)
    print(json.dumps(out, indent=2))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.action == "info":
        from kdlab.teachers.cached import human, read_meta

        for path in args.recipe:
            meta = read_meta(path)
            if meta is None:
                raise KDLabError(f"{path} is not a teacher cache (no meta.json)")
            print(
                json.dumps(
                    {
                        k: meta[k]
                        for k in (
                            "mode",
                            "num_samples",
                            "num_views",
                            "num_classes",
                            "dtype",
                            "topk",
                            "taps",
                            "complete",
                        )
                    }
                    | {"size": human(meta["bytes"])}
                )
            )
        return 0
    from kdlab.recipe import load_recipe
    from kdlab.teachers.load import build_for_recipe

    files, overrides = _files_and_overrides(args.recipe, "kdlab cache build needs at least one RECIPE file")
    path = build_for_recipe(load_recipe(files, overrides), teacher=args.teacher, out=args.out, progress=args.progress)
    print(f"teacher cache ready: {path}\nuse it with: teacher.cache.path={Path(path)} (or keep cache: auto)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdlab.export import export_with_message

    print(export_with_message(args.run, args.out, weights=args.weights, format=args.format)[1])
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kdlab.predict import predict, rows_csv, write_predictions

    result = predict(args.student, args.inputs, top_k=args.top_k, weights=args.weights, device=args.device)
    if args.out:
        print(f"wrote {len(result['rows'])} predictions to {write_predictions(result, args.out)}", file=sys.stderr)
    else:
        try:
            sys.stdout.write(rows_csv(result["rows"], result["top_k"]))
            sys.stdout.flush()
        except BrokenPipeError:  # `kdlab predict ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    for source, acc in result["accuracy"].items():
        print(f"top-1 on {source} (its labels): {100 * acc:.2f}%", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from kdlab.predict import evaluate

    metrics = evaluate(args.run, args.data, args.overrides, split=args.split, weights=args.weights, device=args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from kdlab.shipped import copy_recipes

    dest = copy_recipes(args.path, force=args.force)
    print(
        f"copied the shipped recipes to {dest}; e.g. kdlab run {dest / 'digits' / 'pair.yaml'} "
        f"{dest / 'methods' / 'kd.yaml'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdlab", description="Knowledge distillation toolkit.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a recipe (one run folder per seed; resumes unfinished runs)")
    r.add_argument(
        "recipe",
        nargs="*",
        metavar="RECIPE|KEY=VALUE",
        help="recipe files (.yaml/.yml/.toml, merged left to right, e.g. a pair file then a method "
        "file), then key.path=value overrides, e.g. optim.lr=0.1 objective.kd.tau=2",
    )
    r.add_argument("--seeds", type=_seeds, help="seeds to run, e.g. 0,1,2 or 0-4 (default: the recipe's seed)")
    r.add_argument(
        "--together",
        action="store_true",
        help="train the seeds side by side in this process, one "
        "step each in turn (small students on one GPU); each run folder is what a single run writes",
    )
    r.add_argument("--out", help="parent folder of run folders (overrides the recipe's `out`)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument(
        "--force",
        action="store_true",
        help="start over even if the run folder holds a run (never one that another process is training)",
    )
    r.add_argument(
        "--wait",
        action="store_true",
        help="if another process is training the run folder, wait for "
        "it (then reuse the finished run) instead of failing",
    )
    r.set_defaults(fn=cmd_run)

    ls = sub.add_parser("list", help="list registered methods, models, datasets or views")
    ls.add_argument("what", nargs="?", choices=["methods", "models", "datasets", "views", "layers"])
    ls.add_argument(
        "--markdown",
        action="store_true",
        help="print Markdown tables with parameter defaults and descriptions (all kinds: docs/catalogue.md)",
    )
    ls.add_argument(
        "--verbose", "-v", action="store_true", help="show every parameter with its default and description"
    )
    ls.set_defaults(fn=cmd_list)

    rep = sub.add_parser("report", help="aggregate run folders into a Markdown/CSV table and PNG plots")
    rep.add_argument("runs", nargs="+", help="run folders, or folders that contain run folders")
    rep.add_argument("--out", default="report", help="output folder (default: report)")
    rep.add_argument("--baseline", help="label of the baseline row for the gain column (e.g. ce)")
    rep.set_defaults(fn=cmd_report)

    st = sub.add_parser("study", help="run a grid of methods x settings x seeds (resumable), then tables and plots")
    st.add_argument("study", help="study file (.yaml/.toml), e.g. recipes/studies/nine_methods_noise.yaml")
    st.add_argument("overrides", nargs="*", help="key.path=value overrides applied to every run")
    st.add_argument("--workers", type=int, help="parallel worker processes (one thread each)")
    st.add_argument("--out", help="output folder (overrides the study's `out`)")
    st.add_argument("--dry-run", action="store_true", help="list the runs (and validate them) without training")
    st.add_argument("--report", action="store_true", help="only rebuild the tables and plots from finished runs")
    st.set_defaults(fn=cmd_study)

    d = sub.add_parser("demo", help="the default demo: teacher, then CE vs KD students over seeds, offline")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seeds", type=_seeds, default=[0, 1, 2])
    d.add_argument("--force", action="store_true", help="retrain everything, including the teacher")
    d.set_defaults(fn=cmd_demo)

    dg = sub.add_parser("diagnose", help="teacher-only T. stddev of a recipe's augmentation (lower is better)")
    dg.add_argument("recipe", nargs="+", metavar="RECIPE|KEY=VALUE")
    dg.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    dg.add_argument("--group", type=int, default=5, help="batches per group mean (default 5)")
    dg.add_argument(
        "--student",
        metavar="RUN_OR_WEIGHTS",
        help="trained student (a run folder or a weights file) for views that score with the student",
    )
    dg.set_defaults(fn=cmd_diagnose)

    c = sub.add_parser(
        "cache",
        help="build a teacher's soft-label cache once (kdlab cache build RECIPE...), "
        "or show one (kdlab cache info PATH)",
    )
    c.add_argument("action", choices=["build", "info"])
    c.add_argument("recipe", nargs="+", help="recipe files and key.path=value overrides (build), cache folders (info)")
    c.add_argument("--teacher", type=int, default=0, help="which teacher of a multi-teacher recipe (default 0)")
    c.add_argument("--out", default=None, help="cache folder (default: where `cache: auto` puts it)")
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    c.set_defaults(fn=cmd_cache)
    e = sub.add_parser("export", help="write a run's student (safetensors weights or ONNX) with its preprocessing")
    e.add_argument("run", help="run folder (needs neither the training data nor the training directory)")
    e.add_argument("--out", required=True, help="output file (.safetensors, .onnx)")
    e.add_argument("--weights", choices=["final", "best"], default="final")
    e.add_argument(
        "--format",
        default="safetensors",
        help="safetensors (default), onnx (checked against ONNX Runtime where it is installed) or hf (a "
        "Hugging Face folder for hf_classifier students with head: hf)",
    )
    e.set_defaults(fn=cmd_export)

    pr = sub.add_parser("predict", help="predict raw inputs with a run's or an export's student (its preprocessing)")
    pr.add_argument("student", metavar="RUN_OR_EXPORT", help="run folder, exported .safetensors or .onnx")
    pr.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=".npy/.npz arrays of raw inputs (.npz: `x`, optional labels `y`), image files or folders, "
        ".txt files (one text per line)",
    )
    pr.add_argument("--top-k", type=int, default=1, help="classes per input (default 1)")
    pr.add_argument("--out", help="write .csv or .json instead of printing CSV")
    pr.add_argument("--weights", choices=["final", "best"], default="final", help="for a run folder")
    pr.add_argument("--device", default="cpu", help="cpu (default), cuda or auto (PyTorch students)")
    pr.set_defaults(fn=cmd_predict)

    ev = sub.add_parser("eval", help="metrics of a run's student on a dataset (the run's normalisation)")
    ev.add_argument("run", help="run folder (or an exported .safetensors/.onnx, with --data)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.kwargs.root=/data/other")
    ev.add_argument(
        "--data",
        metavar="NAME_OR_RECIPE",
        help="a dataset name or a recipe file whose `data:` is used (default: the run's own data)",
    )
    ev.add_argument("--split", default="test", choices=["test", "train", "val"])
    ev.add_argument("--weights", choices=["final", "best"], default="final")
    ev.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu or cuda")
    ev.set_defaults(fn=cmd_eval)
    rc = sub.add_parser("recipes", help="copy the shipped recipes (pairs, methods, studies) to a folder")
    rc.add_argument("path", help="destination folder (created)")
    rc.add_argument("--force", action="store_true", help="copy into an existing non-empty folder")
    rc.set_defaults(fn=cmd_recipes)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key.path=value overrides may also come after options (`kdlab study S.yaml --workers 2 seed=1`): argparse
    # leaves a positional list that follows options unparsed, so they are appended to it here
    target = "overrides" if hasattr(args, "overrides") else ("recipe" if hasattr(args, "recipe") else None)
    if extra and target is not None and all("=" in a and not a.startswith("-") for a in extra):
        setattr(args, target, [*(getattr(args, target) or []), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if "" not in sys.path and os.getcwd() not in sys.path:  # own models/plugins next to the recipes import
        sys.path.insert(0, os.getcwd())
    try:
        return args.fn(args)
    except KDLabError as e:
        from kdlab.engine.progress import stop_bars

        stop_bars()
        print(f"kdlab: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever it wraps
        return 2
    except OSError as e:  # a full disk or read-only folder mid-run: checkpoints are written atomically, so say so
        if e.errno not in DISK_ERRORS:
            raise
        print(
            f"kdlab: error: cannot write {e.filename or 'a run file'}: {e.strerror}; the last epoch checkpoint is "
            "intact: free space or fix permissions, then `kdlab run --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # the real resume command, no traceback, the shell's 128 + SIGINT
        from kdlab.engine.progress import interrupted_message

        print(interrupted_message(), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser"]
