"""The `kdlab` command end to end: list, run (files + overrides, seeds), report, export, one-line errors."""

import json

import pytest

from kdlab.cli import main


def test_list_shows_every_kind(capsys):
    assert main(["list", "methods", "--markdown"]) == 0
    out = capsys.readouterr().out
    for name in ["kd", "dkd", "crd", "bss", "fitnet", "dml", "letkd_penult"]:
        assert f"`{name}`" in out
    assert main(["list", "views", "--markdown"]) == 0
    assert "`cutmix_pick`" in capsys.readouterr().out


def test_run_report_export(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pair.yaml").write_text(
        "name: ce\ndata: {name: digits, batch_size: 256}\nstudent: {name: smallcnn, kwargs: {width: 0.25}}\n"
        "teacher: {model: {name: smallcnn, kwargs: {width: 0.5}}}\nschedule: {epochs: 1}\n"
        "train: {tensorboard: false}\n"
    )
    (tmp_path / "kd.yaml").write_text("name: kd\nobjective: {ce: {weight: 0.1}, kd: {}}\n")
    assert main(["run", "pair.yaml", "kd.yaml", "objective.kd.tau=2", "--seeds", "0,1", "--out", "runs"]) == 0
    for seed in (0, 1):
        saved = (tmp_path / "runs" / "kd" / f"seed{seed}" / "recipe.yaml").read_text()
        assert "tau: 2.0" in saved
    assert main(["report", "runs", "--out", "rep"]) == 0
    assert "| kd | 2 |" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "test_top1.png").exists()
    assert main(["export", "runs/kd/seed0", "--out", "s.safetensors"]) == 0
    assert (tmp_path / "s.safetensors").exists()
    assert json.loads((tmp_path / "runs" / "kd" / "seed0" / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "missing.yaml"], "recipe file not found"),
        (["run"], "needs at least one RECIPE"),
        (["report", "nowhere"], "does not exist"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlab: error:") and message in err and "\n" not in err
