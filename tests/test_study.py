"""Studies (kdlab.study): grid expansion, teachers, resume after a crash, the report, parallel workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kdlab.study.execute as study_execute
from kdlab.errors import KDLabError
from kdlab.study import load_study, plan_study, run_study, study_report

ROOT = Path(__file__).resolve().parents[1]
R = ROOT / "recipes"
FAST = ["schedule.epochs=1", "schedule.milestones=[]", "train.tensorboard=false"]
NOISY = ["data.corruption={noise: {rate: 0.0}}"]


def small_study(out: Path, **extra) -> dict:
    """2 methods x 2 noise rates x 2 seeds on digits, 1 epoch; student smallcnn x0.25, teacher smallcnn x0.5."""
    d = {
        "name": "tiny",
        "out": str(out),
        "base": [str(R / "digits/pair.yaml")],
        "methods": {"ce": str(R / "methods/ce.yaml"), "kd": str(R / "methods/kd.yaml")},
        "grid": {"noise": {"0.0": ["data.corruption.noise.rate=0.0"], "0.4": ["data.corruption.noise.rate=0.4"]}},
        "seeds": [0, 1],
        "overrides": FAST + NOISY,
        "teacher": {"recipe": str(R / "digits/teacher.yaml"), "overrides": ["student.kwargs.width=0.5"]},
    }
    d.update(extra)
    return d


def _key(runs):
    return [
        (r.kind, r.run_dir, r.seed, r.method, r.cell, r.teacher_dir, json.dumps(r.recipe, sort_keys=True)) for r in runs
    ]


# ------------------------------------------------------------------------------------------------ planning
def test_grid_expansion_is_complete_and_deterministic(tmp_path):
    st, _ = load_study(small_study(tmp_path / "s"))
    runs = plan_study(st)
    assert _key(runs) == _key(plan_study(load_study(small_study(tmp_path / "s"))[0]))
    kinds = [r.kind for r in runs]
    assert kinds == ["teacher"] * 2 + ["student"] * 8  # teachers first
    students = [r for r in runs if r.kind == "student"]
    expected = [(c, m, s) for c in ("0.0", "0.4") for m in ("ce", "kd") for s in (0, 1)]
    assert [(r.cell["noise"], r.method, r.seed) for r in students] == expected
    for r in students:
        assert r.run_dir == str(tmp_path / "s" / f"noise-{r.cell['noise']}" / r.method / f"seed{r.seed}")
        assert r.recipe["name"] == r.method and r.recipe["seed"] == r.seed
        assert r.recipe["data"]["corruption"] == {"noise": {"rate": float(r.cell["noise"])}, "seed": 0}
        assert r.recipe["schedule"]["epochs"] == 1
        assert r.recipe["teacher"] == {"run": r.teacher_dir, "recipe": None, "weights": "final"}
        assert r.teacher_weights == "final" and r.teacher_clean is False
    teachers = {r.run_dir: r for r in runs if r.kind == "teacher"}
    assert {r.teacher_dir for r in students} == set(teachers)
    for r in students:  # the teacher of a cell trains on the cell's data, at its own width and seed 0
        t = teachers[r.teacher_dir]
        assert t.seed == 0 and t.run_dir.endswith("seed0")
        assert t.recipe["data"] == r.recipe["data"]
        assert t.recipe["student"] == {"name": "smallcnn", "kwargs": {"width": 0.5}}
        assert "teacher" not in t.recipe


def test_teachers_are_shared_and_teacherless_methods_skip_them(tmp_path):
    d = small_study(tmp_path / "s")
    d["methods"]["solo"] = {"file": str(R / "methods/ce.yaml"), "recipe": {"teacher": None}}
    d["grid"] = {
        "tau": {
            "2": {"methods": {"kd": ["objective.kd.tau=2"]}, "runs": ["teacher.weights=best"]},
            "4": {"methods": {"kd": ["objective.kd.tau=4"]}, "x": 4},
        }
    }
    with pytest.raises(KDLabError, match="val_fraction"):  # an early-stopped teacher needs a validation split
        plan_study(load_study(d)[0], validate=False)
    d["overrides"].append("data.val_fraction=0.2")
    runs = plan_study(load_study(d)[0])
    teachers = [r for r in runs if r.kind == "teacher"]
    assert len(teachers) == 1 and teachers[0].used_by == ["tau=2", "tau=4"]
    by = {(r.method, r.cell["tau"], r.seed): r for r in runs if r.kind == "student"}
    assert by[("kd", "2", 0)].recipe["objective"]["kd"]["tau"] == 2
    assert by[("kd", "4", 0)].recipe["objective"]["kd"]["tau"] == 4
    assert by[("ce", "2", 0)].recipe["objective"] == by[("ce", "4", 0)].recipe["objective"]
    assert by[("kd", "2", 0)].recipe["teacher"]["weights"] == "best"  # a cell override beats the study default
    assert by[("kd", "4", 0)].recipe["teacher"]["weights"] == "final"
    solo = by[("solo", "2", 0)]
    assert solo.recipe["teacher"] is None and solo.teacher_dir is None  # teacher.* overrides dropped


def test_corruption_is_shared_with_the_teacher_unless_clean(tmp_path):
    d = small_study(
        tmp_path / "s",
        grid={"noise": {"0.2": ["data.corruption.noise.rate=0.2"], "0.4": ["data.corruption.noise.rate=0.4"]}},
    )
    d["overrides"] += ["data.corruption={noise: {rate: 0.0}}", "data.val_fraction=0.2"]
    d["teacher"]["weights"] = "best"
    runs = plan_study(load_study(d)[0])
    teachers = {r.run_dir: r for r in runs if r.kind == "teacher"}
    assert len(teachers) == 2
    for r in runs:
        if r.kind == "student":
            corr = r.recipe["data"]["corruption"]
            assert corr == {"noise": {"rate": float(r.cell["noise"])}, "seed": 0}  # seed pinned by the study
            assert teachers[r.teacher_dir].recipe["data"] == r.recipe["data"]
            assert r.recipe["teacher"]["weights"] == "best"
    d["teacher"]["clean"] = True
    runs = plan_study(load_study(d)[0])
    teachers = [r for r in runs if r.kind == "teacher"]
    assert len(teachers) == 1 and "corruption" not in teachers[0].recipe["data"]
    assert teachers[0].recipe["data"]["val_fraction"] == 0.2
    d["teacher"].update(clean=False, per_seed=True)
    d["corruption_seed"] = None
    runs = plan_study(load_study(d)[0])
    teachers = {r.run_dir: r for r in runs if r.kind == "teacher"}
    assert len(teachers) == 4  # 2 cells x 2 seeds
    for r in runs:
        if r.kind == "student":
            assert "seed" not in r.recipe["data"]["corruption"]
            assert teachers[r.teacher_dir].seed == r.seed


def test_study_schema_errors(tmp_path):
    with pytest.raises(KDLabError, match="did you mean 'methods'"):
        load_study({"out": "x", "method": {}})
    with pytest.raises(KDLabError, match="unknown methods"):
        load_study(small_study(tmp_path, grid={"a": {"v": {"methods": {"dkd": ["x=1"]}}}}))
    with pytest.raises(KDLabError, match="did you mean 'runs'"):
        load_study(small_study(tmp_path, grid={"a": {"v": {"run": ["x=1"]}}}))
    bad = small_study(tmp_path, overrides=["schedule.epochz=1"])
    with pytest.raises(KDLabError, match="epochz"):
        run_study(bad, dry_run=True, quiet=True)
    assert load_study(small_study(tmp_path, seeds="0-3"))[0].seeds == [0, 1, 2, 3]
    assert load_study(small_study(tmp_path, seeds=3))[0].seeds == [0, 1, 2]


NINE = {"ce", "kd", "bss", "fitnet", "fsp", "at", "ab", "rkd", "sp", "dml"}


@pytest.mark.parametrize(
    ("name", "teachers", "students", "methods"),
    [
        ("nine_methods_noise", 4, 10 * 8 * 3, NINE),
        ("nine_methods_imbalance", 3, 10 * 3 * 3, NINE),
        ("capacity_gap", 6, 6 * 6 * 3, {"ce", "kd", "fitnet", "rkd", "sp", "dml"}),
    ],
)
def test_ready_study_files_expand(name, teachers, students, methods):
    st, folder = load_study(R / "studies" / f"{name}.yaml")
    assert st.name == name and st.baseline == "ce"
    runs = plan_study(st)  # every run recipe validates
    assert sum(r.kind == "teacher" for r in runs) == teachers
    assert sum(r.kind == "student" for r in runs) == students
    assert set(st.methods) == methods
    for m in st.methods.values():
        for f in m.file:
            assert Path(f).parent.resolve() == (R / "methods").resolve()


# ------------------------------------------------------------------------------- running, resume, report
def test_killed_study_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "study"
    d = small_study(out)
    real = study_execute.run_recipe
    trained: list[str] = []

    def counting(recipe, *, run_dir, limit=None, **kw):
        if not (Path(run_dir) / "summary.json").exists():
            if limit is not None and len(trained) >= limit:
                raise RuntimeError("simulated crash")
            trained.append(str(run_dir))
        return real(recipe, run_dir=run_dir, **kw)

    monkeypatch.setattr(study_execute, "run_recipe", lambda r, **kw: counting(r, limit=5, **kw))
    with pytest.raises(KDLabError, match="5 of 10 runs failed"):
        run_study(d, quiet=True)
    first = list(trained)
    assert len(first) == 5 and all("teachers" in p for p in first[:2])  # teachers trained first
    mtimes = {p: (Path(p) / "summary.json").stat().st_mtime_ns for p in first}

    trained.clear()
    monkeypatch.setattr(study_execute, "run_recipe", lambda r, **kw: counting(r, **kw))
    res = run_study(d, quiet=True)
    assert len(trained) == 5 and not set(trained) & set(first)
    assert res["trained"] == 5 and res["reused"] == 5 and res["failed"] == {}
    assert {p: (Path(p) / "summary.json").stat().st_mtime_ns for p in first} == mtimes

    trained.clear()
    res = run_study(d, quiet=True)  # a finished study trains nothing
    assert trained == [] and res["trained"] == 0 and res["reused"] == 10

    # every run folder says how it was made
    meta = json.loads((out / "noise-0.4" / "kd" / "seed1" / "study.json").read_text())
    assert meta["method"] == "kd" and meta["cell"] == {"noise": "0.4"} and meta["teacher_weights"] == "final"
    assert meta["teacher_clean"] is False and meta["teacher_dir"].startswith(str(out / "teachers"))
    assert (out / "plan.json").is_file()

    # the teacher of a noisy cell trained on exactly the students' noisy labels (shared corruption seed)
    student = json.loads((out / "noise-0.4" / "kd" / "seed1" / "corruption.json").read_text())
    teacher = json.loads((Path(meta["teacher_dir"]) / "corruption.json").read_text())
    assert student["noisy_labels"] == teacher["noisy_labels"] and student["flipped"] > 0

    # the report: rows = methods, columns = cells, cells = mean ± std of the summaries' final top-1
    rep = res["report"]
    rdir = out / "report"
    summaries = {}
    for p in sorted(out.glob("noise-*/*/seed*/summary.json")):
        s = json.loads(p.read_text())
        summaries.setdefault((p.parts[-3], p.parts[-4].removeprefix("noise-")), []).append(s["final"]["test/top1"])
    assert len(summaries) == 4 and all(len(v) == 2 for v in summaries.values())
    cells = {(c["method"], c["noise"]): c for c in rep["cells"]}
    assert set(cells) == set(summaries)
    for k, vals in summaries.items():
        mean = sum(vals) / 2
        assert cells[k]["top1_mean"] == pytest.approx(mean)
        assert cells[k]["top1_std"] == pytest.approx(abs(vals[0] - vals[1]) / 2**0.5)
        assert cells[k]["n"] == 2
        base = sum(summaries[("ce", k[1])]) / 2
        assert cells[k]["gain"] == pytest.approx(mean - base)
    md = (rdir / "report.md").read_text()
    assert "| method | noise=0.0 | noise=0.4 |" in md
    ce300 = cells[("ce", "0.0")]
    assert f"| ce | {100 * ce300['top1_mean']:.2f} ± {100 * ce300['top1_std']:.2f} |" in md
    assert "| kd | baseline" not in md and "| ce | baseline | baseline |" in md
    lines = (rdir / "top1.csv").read_text().splitlines()
    assert lines[0].startswith("method,noise=0.0 mean,noise=0.0 std,noise=0.4 mean")
    assert [ln.split(",")[0] for ln in lines[1:]] == ["ce", "kd"]
    assert float(lines[1].split(",")[1]) == pytest.approx(100 * ce300["top1_mean"], abs=1e-3)
    assert (rdir / "gain.csv").read_text().splitlines()[0] == "method,noise=0.0,noise=0.4"
    assert len((rdir / "runs.csv").read_text().splitlines()) == 1 + 8
    for png in ("top1_vs_noise.png", "capacity_gap_teacher_top1.png"):
        assert (rdir / png).stat().st_size > 1000
        assert rdir / png in rep["files"]
    assert all(c["teacher_top1"] is not None for c in rep["cells"])

    # a report of a partly finished study marks the missing seeds
    import shutil

    shutil.rmtree(out / "noise-0.4" / "kd" / "seed1")
    partial = study_report(d, report_dir=tmp_path / "partial")
    assert "(n=1)" in partial["markdown"]


def test_parallel_workers_match_sequential(tmp_path):
    d = {
        "name": "par",
        "base": [str(R / "digits/pair.yaml")],
        "methods": {"solo": {"recipe": {"teacher": None}}},
        "seeds": [0, 1],
        "overrides": FAST,
    }
    seq = run_study({**d, "out": str(tmp_path / "seq")}, quiet=True, report=False)
    par = run_study({**d, "out": str(tmp_path / "par")}, workers=2, quiet=True)
    assert seq["trained"] == par["trained"] == 2
    for seed in (0, 1):
        a = json.loads((tmp_path / "seq" / "solo" / f"seed{seed}" / "summary.json").read_text())
        b = json.loads((tmp_path / "par" / "solo" / f"seed{seed}" / "summary.json").read_text())
        assert a["final"]["test/top1"] == pytest.approx(b["final"]["test/top1"], abs=1e-6)
    assert (tmp_path / "par" / "report" / "report.md").is_file()


def test_a_cached_study_builds_each_cells_cache_once_and_trains_the_same(tmp_path):
    """teacher.cache=auto: one cache per teacher and grid cell, built before the students; noise changes only
    labels, so both cells of a shared teacher read one cache; the students match the live study (fp32)."""
    live = run_study(small_study(tmp_path / "live", seeds=[0]), quiet=True)
    cached = run_study(
        small_study(tmp_path / "cached", seeds=[0], overrides=FAST + NOISY + ["teacher.cache={dtype: fp32}"]),
        quiet=True,
    )
    caches = sorted(p.parent for p in (tmp_path / "cached" / "teachers").glob("*/seed0/cache/*/meta.json"))
    assert len(caches) == 2  # one per teacher (the two noise cells train different teachers)
    for cell in ("0.0", "0.4"):
        kd = tmp_path / "cached" / f"noise-{cell}" / "kd" / "seed0"
        rec = json.loads((kd / "metrics.jsonl").read_text().splitlines()[-1])
        assert rec["cost/teacher_passes"] == 0.0
        a = json.loads((tmp_path / "live" / f"noise-{cell}" / "kd" / "seed0" / "summary.json").read_text())
        b = json.loads((kd / "summary.json").read_text())
        assert a["final"]["test/top1"] == pytest.approx(b["final"]["test/top1"], abs=0.01)
    assert cached["cache_s"] > 0 and "cache_s" in live
