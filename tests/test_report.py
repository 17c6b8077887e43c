"""kdlab.report: fake run folders with known numbers -> mean/std, tables, gains, plots, errors."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from kdlab.errors import KDLabError
from kdlab.report import (
    aggregate,
    csv_table,
    find_runs,
    gain_over,
    group,
    load_run,
    markdown_table,
    plot_curves,
    plot_xy,
    rich_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 4
# test/top1 per epoch for each (label, seed): the peak is at epoch 3, so best != last.
CURVES = {
    ("kd", 0): [0.50, 0.70, 0.80, 0.75],
    ("kd", 1): [0.52, 0.71, 0.82, 0.78],
    ("kd", 2): [0.49, 0.69, 0.79, 0.77],
    ("ce", 0): [0.45, 0.60, 0.72, 0.70],
    ("ce", 1): [0.46, 0.62, 0.74, 0.71],
    ("ce", 2): [0.44, 0.61, 0.70, 0.69],
}


def _ece(label: str, seed: int) -> float:
    return 0.05 + 0.01 * seed + (0.0 if label == "kd" else 0.03)


def _agree(seed: int) -> float:
    return 0.90 + 0.02 * seed


def _kl(seed: int) -> float:
    return 0.30 - 0.05 * seed


def write_run(root: Path, label: str, seed: int) -> Path:
    """One run folder in the engine's format; only KD runs have teacher/agreement/KL."""
    d = root / f"{label}-s{seed}"
    d.mkdir(parents=True)
    top1 = CURVES[(label, seed)]
    kd = label == "kd"
    lines = []
    for e, acc in enumerate(top1, start=1):
        m = {
            "epoch": e,
            "stage": "student",
            "lr": 0.1 / e,
            "train/loss": 2.0 / e + 0.1 * seed,
            "train/ce": 1.5 / e,
            "test/top1": acc,
            "test/top5": min(1.0, acc + 0.15),
            "test/nll": 1.0 / e,
            "test/ece": _ece(label, seed),
            "time/epoch_s": 1.0,
        }
        if kd:
            m["test/agree"] = _agree(seed)
            m["test/kl_ts"] = _kl(seed)
        lines.append(json.dumps(m))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    def tests(ep: int) -> dict:
        out = {
            "epoch": ep,
            "test/top1": top1[ep - 1],
            "test/top5": top1[ep - 1] + 0.1,
            "test/nll": 1.0 / ep,
            "test/ece": _ece(label, seed),
        }
        if kd:
            out.update({"test/agree": _agree(seed), "test/kl_ts": _kl(seed)})
        return out

    best_ep = max(range(1, EPOCHS + 1), key=lambda e: top1[e - 1])
    summary = {
        "name": label,
        "seed": seed,
        "epochs": EPOCHS,
        "wall_s": 60.0 * (1 + seed),
        "final": tests(EPOCHS),
        "best": tests(best_ep),
        "status": "finished",
    }
    if kd:
        summary["teacher"] = {"test/top1": 0.90 + 0.001 * seed}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "recipe.yaml").write_text(
        yaml.safe_dump({"name": label, "seed": seed, "method": {"T": 4}, "objective": {label: {}}})
    )
    return d


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # nested at different depths: find_runs must search recursively
    for seed in range(3):
        write_run(root / "kd", "kd", seed)
        write_run(root / "baselines" / "ce", "ce", seed)
    return root


def _rows(runs: Path):
    recs = [load_run(p) for p in find_runs([runs / "kd", runs / "baselines"])]
    return recs, {r.label: r for r in aggregate(recs)}


def test_find_and_load(runs: Path):
    found = find_runs([runs])
    assert len(found) == 6 and all((p / "summary.json").is_file() for p in found)
    # a run folder itself, and duplicates, are accepted
    assert find_runs([runs / "kd" / "kd-s0", runs / "kd"]) == [
        runs / "kd" / "kd-s0",
        runs / "kd" / "kd-s1",
        runs / "kd" / "kd-s2",
    ]
    rec = load_run(runs / "kd" / "kd-s1")
    assert (rec.name, rec.seed, len(rec.metrics)) == ("kd", 1, EPOCHS)
    assert rec.summary["status"] == "finished" and rec.recipe["method"]["T"] == 4


def test_no_runs_error(tmp_path: Path, runs: Path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(KDLabError, match="no runs found"):
        find_runs([empty])
    with pytest.raises(KDLabError, match="no runs found"):
        find_runs([runs, empty])  # one bad path among good ones is still reported
    with pytest.raises(KDLabError, match="does not exist"):
        find_runs([tmp_path / "nope"])


def test_group_order(runs: Path):
    recs = [
        load_run(runs / "baselines" / "ce" / "ce-s0"),
        load_run(runs / "kd" / "kd-s0"),
        load_run(runs / "baselines" / "ce" / "ce-s1"),
        load_run(runs / "kd" / "kd-s1"),
    ]
    g = group(recs)
    assert list(g) == ["ce", "kd"]
    assert [r.seed for r in g["kd"]] == [0, 1]
    assert list(group(list(reversed(recs)))) == ["kd", "ce"]
    assert list(group(recs, by="method.T")) == ["4"]  # dotted recipe key
    assert [r.label for r in aggregate(recs)] == ["ce", "kd"]


def test_mean_std_best_vs_last(runs: Path):
    _, rows = _rows(runs)
    for label in ("kd", "ce"):
        curves = [CURVES[(label, s)] for s in range(3)]
        best = [max(c) for c in curves]
        last = [c[-1] for c in curves]
        r = rows[label]
        assert r.n == 3 and sorted(r.seeds) == [0, 1, 2]
        assert r.stats["best_top1"].mean == pytest.approx(statistics.mean(best))
        assert r.stats["best_top1"].std == pytest.approx(statistics.stdev(best))
        assert r.stats["last_top1"].mean == pytest.approx(statistics.mean(last))
        assert r.stats["last_top1"].std == pytest.approx(statistics.stdev(last))
        assert r.stats["best_top1"].mean > r.stats["last_top1"].mean
        eces = [_ece(label, s) for s in range(3)]
        assert r.stats["last_ece"].mean == pytest.approx(statistics.mean(eces))
        assert r.stats["last_ece"].std == pytest.approx(statistics.stdev(eces))
    kd, ce = rows["kd"], rows["ce"]
    assert kd.stats["last_agree"].mean == pytest.approx(statistics.mean(_agree(s) for s in range(3)))
    assert kd.stats["last_kl_ts"].std == pytest.approx(statistics.stdev(_kl(s) for s in range(3)))
    assert kd.stats["teacher_top1"].mean == pytest.approx(0.901)
    assert ce.stats["last_agree"] is None and ce.stats["teacher_top1"] is None


def test_single_seed_std_zero(runs: Path):
    (row,) = aggregate([load_run(runs / "kd" / "kd-s2")])
    assert row.n == 1 and row.stats["best_top1"] == (0.79, 0.0, 1)


def test_gain_over(runs: Path):
    _, rows = _rows(runs)
    gained = {r.label: r for r in gain_over(list(rows.values()), "ce")}
    want = statistics.mean(max(CURVES[("kd", s)]) for s in range(3)) - statistics.mean(
        max(CURVES[("ce", s)]) for s in range(3)
    )
    assert gained["kd"].gain["best_top1"] == pytest.approx(want)
    assert gained["ce"].gain["best_top1"] == 0.0
    assert "last_agree" not in gained["kd"].gain  # baseline lacks it
    assert rows["kd"].gain == {}  # inputs untouched
    with pytest.raises(KDLabError, match="baseline 'xx'"):
        gain_over(list(rows.values()), "xx")


def test_markdown_table(runs: Path):
    _, rows = _rows(runs)
    md = markdown_table(list(rows.values()), baseline="ce")
    lines = md.strip().splitlines()
    assert lines[0].startswith("| method | seeds | top-1 best (%) | top-1 last (%) | agreement (%)")
    assert "KL(T‖S)" in lines[0] and "ECE (%)" in lines[0] and "gain vs ce (pp)" in lines[0]
    kd_line = next(ln for ln in lines if ln.startswith("| kd "))
    ce_line = next(ln for ln in lines if ln.startswith("| ce "))
    best = [100 * max(CURVES[("kd", s)]) for s in range(3)]
    last = [100 * CURVES[("kd", s)][-1] for s in range(3)]
    assert f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}" in kd_line  # 80.33 ± 1.53
    assert "80.33 ± 1.53" in kd_line
    assert f"{statistics.mean(last):.2f} ± {statistics.stdev(last):.2f}" in kd_line
    assert "92.00 ± 2.00" in kd_line  # agreement in %
    assert "0.250 ± 0.050" in kd_line  # KL in nats, 3 decimals
    assert "run time (min)" in lines[0] and "2.0 ± 1.0" in kd_line  # wall 60, 120, 180 s
    # the gain is on the last epoch (the best one is picked on test without a validation split)
    gain = statistics.mean(last) - statistics.mean(100 * CURVES[("ce", s)][-1] for s in range(3))
    assert kd_line.rstrip(" |").endswith(f"{gain:+.2f}") and "last-epoch gain vs ce (pp)" in lines[0]
    cells = [c.strip() for c in ce_line.strip("|").split("|")]
    assert cells[1] == "3" and cells[4] == "–" and cells[5] == "–"  # no agreement/KL for CE
    assert cells[-1] == "baseline"
    assert "gain" not in markdown_table(list(rows.values()))


def test_csv_and_rich(runs: Path):
    _, rows = _rows(runs)
    data = list(csv.DictReader(io.StringIO(csv_table(gain_over(list(rows.values()), "ce")))))
    assert [d["method"] for d in data] == ["kd", "ce"]
    assert float(data[0]["best_top1_mean"]) == pytest.approx(rows["kd"].stats["best_top1"].mean)
    assert data[1]["last_agree_mean"] == "" and data[1]["baseline"] == "ce"
    from rich.console import Console
    from rich.table import Table

    t = rich_table(list(rows.values()), baseline="ce")
    assert isinstance(t, Table) and t.row_count == 2
    con = Console(file=io.StringIO(), width=200)
    con.print(t)
    assert "80.33 ± 1.53" in con.file.getvalue()


def _assert_png(p: Path):
    data = p.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000


def test_plots(runs: Path, tmp_path: Path):
    recs, _ = _rows(runs)
    out = plot_curves(recs, tmp_path / "plots", metrics=("test/top1", "train/loss", "not/logged"))
    assert [p.name for p in out] == ["test_top1.png", "train_loss.png"]  # unlogged metric skipped
    for p in out:
        _assert_png(p)
    table = [
        {"method": m, "noise": n, "acc": a, "acc_std": 0.01}
        for m in ("kd", "ce")
        for n, a in ((0.0, 0.8), (0.2, 0.7), (0.4, 0.6))
    ]
    p = plot_xy(
        table,
        "noise",
        "acc",
        "method",
        tmp_path / "xy" / "acc_vs_noise.png",
        xlabel="noise rate",
        ylabel="top-1",
        title="accuracy vs noise",
    )
    _assert_png(p)


def test_write_report(runs: Path, tmp_path: Path):
    out = tmp_path / "report"
    res = write_report([runs], out, baseline="ce")
    names = {Path(f).name for f in res["files"]}
    assert {"report.md", "report.csv", "test_top1.png", "train_loss.png", "test_agree.png"} <= names
    md = (out / "report.md").read_text()
    assert md == res["markdown"] and "80.33 ± 1.53" in md and "gain vs ce" in md
    assert "](test_top1.png)" in md
    assert [r.label for r in res["rows"]] == ["ce", "kd"]  # sorted paths: baselines/ before kd/
    assert (out / "report.csv").read_text().startswith("method,seeds,")
    with pytest.raises(KDLabError):
        write_report([runs], tmp_path / "r2", baseline="nope")


def test_summary_gaps_filled_from_metrics(runs: Path):
    """An interrupted/older run: no best/final in summary, torn last metrics line, name from recipe."""
    d = runs / "kd" / "kd-s0"
    (d / "summary.json").write_text(json.dumps({"seed": 0, "status": "running"}))
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 5, "test/to')
    rec = load_run(d)
    assert rec.name == "kd" and len(rec.metrics) == EPOCHS
    assert rec.summary["best"]["test/top1"] == 0.80 and rec.summary["best"]["epoch"] == 3
    assert rec.summary["final"]["test/top1"] == 0.75 and rec.summary["final"]["epoch"] == EPOCHS


def test_report_groups_by_resolved_recipe_not_name(tmp_path: Path):
    """Four experiments named `kd` (two taus x two learning rates) and one experiment saved under two names:
    one row per resolved recipe, labels naming the differing fields, seeds never counted twice."""
    root = tmp_path / "runs"
    recipes = {}
    for tau in (2, 4):
        for lr in (0.1, 0.05):
            for seed in (0, 1):
                d = write_run(root / f"t{tau}-lr{lr}", "kd", seed)
                recipes[d] = {
                    "name": "kd",
                    "seed": seed,
                    "out": f"runs/t{tau}-lr{lr}",
                    "objective": {"kd": {"tau": tau}},
                    "optim": {"lr": lr},
                }
    for name, seed in (("ce", 0), ("ce_copy", 1)):
        d = write_run(root / name, "ce", seed)
        recipes[d] = {"name": name, "seed": seed, "out": f"runs/{name}", "objective": {"ce": {}}}
    for d, r in recipes.items():
        (d / "recipe.yaml").write_text(yaml.safe_dump(r))
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "name": r["name"]}))
    out = write_report([root], tmp_path / "rep", baseline="ce = ce_copy")
    rows = {r.label: r for r in out["rows"]}
    assert sorted(rows) == [
        "ce = ce_copy",
        "kd [objective.kd.tau=2, optim.lr=0.05]",
        "kd [objective.kd.tau=2, optim.lr=0.1]",
        "kd [objective.kd.tau=4, optim.lr=0.05]",
        "kd [objective.kd.tau=4, optim.lr=0.1]",
    ]
    assert all(r.n == 2 and sorted(r.seeds) == [0, 1] for r in rows.values())
    kd = rows["kd [objective.kd.tau=2, optim.lr=0.1]"]
    want_last = statistics.mean(CURVES[("kd", s)][-1] for s in (0, 1)) - statistics.mean(
        CURVES[("ce", s)][-1] for s in (0, 1)
    )
    assert kd.gain["last_top1"] == pytest.approx(want_last)
    per_run = list(csv.DictReader(io.StringIO((tmp_path / "rep" / "runs.csv").read_text())))
    assert len(per_run) == 10 and {d["method"] for d in per_run} == set(rows)
    one = next(d for d in per_run if d["path"].endswith("t4-lr0.05/kd-s1"))
    assert float(one["last_top1"]) == CURVES[("kd", 1)][-1] and one["best_epoch"] == "3" and one["seed"] == "1"
