"""What people see while training (epoch lines, the bar, Ctrl-C) and the train.loggers backends."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kdlab.engine import run_recipe
from kdlab.engine.progress import EpochBar, format_epoch, silenced
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe

RECIPE = (
    "name: ce\ndata: {name: digits, batch_size: 128}\nstudent: {name: smallcnn, kwargs: {width: 0.25}}\n"
    "schedule: {epochs: EPOCHS, milestones: []}\ntrain: {tensorboard: false, threads: 1}\n"
)


def _recipe(tmp_path, epochs=2, **train):
    return load_recipe(
        {
            "name": "ce",
            "data": {"name": "digits", "batch_size": 256},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "schedule": {"epochs": epochs, "milestones": []},
            "train": train,
            "out": str(tmp_path),
        }
    )


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_without_a_terminal_each_epoch_prints_one_line_and_ctrl_c_prints_the_resume_command(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE.replace("EPOCHS", "300"))  # interrupted long before the end
    env = {**os.environ, "KDLAB_THREADS": "1", "PYTHONUNBUFFERED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab.cli", "run", "r.yaml", "--out", "runs"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = tmp_path / "runs" / "ce" / "seed0" / "metrics.jsonl"
    deadline = time.time() + 300  # a loaded machine starts slowly
    while (
        time.time() < deadline
        and proc.poll() is None
        and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2)
    ):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    said = [ln for ln in err.splitlines() if ln.startswith("kdlab: interrupted")]
    assert len(said) == 1 and said[0].startswith("kdlab: interrupted; continue with: kdlab run --resume runs/ce/seed0")
    lines = [ln for ln in err.splitlines() if ln.startswith("ce [main] epoch ")]
    recs = _records(tmp_path / "runs" / "ce" / "seed0")
    assert len(lines) >= 2 and len(lines) in (len(recs), len(recs) - 1)  # flushed as each epoch ends
    assert lines[0] == format_epoch("ce [main] epoch 1/300", recs[0])
    assert f"test top-1 {100 * recs[0]['test/top1']:.2f}%" in lines[0]
    assert f"loss {recs[0]['train/loss']:.4f}" in lines[0]


def test_the_bar_shows_the_running_loss_and_the_last_held_out_top1():
    from rich.console import Console

    buf = io.StringIO()
    bar = EpochBar(
        "kd [main] epoch 2/5",
        4,
        last={"test/top1": 0.912, "epoch": 1},
        console=Console(file=buf, force_terminal=True, width=160),
    )
    reads = []
    bar.step(0.75)
    bar.step(lambda: reads.append(1) or 0.5)  # read (the first read of the epoch)
    bar.step(lambda: reads.append(1) or 0.4)  # within 0.5 s: not read (no device sync)
    bar.progress.refresh()
    shown = buf.getvalue()
    bar.step(lambda: reads.append(1) or 0.25)  # the last step is always read
    bar.stop()
    assert "kd [main] epoch 2/5" in shown  # the stage name in brackets is text, not rich markup
    assert "loss 0.5000" in shown and "test top-1 91.20%" in shown and "3/4" in shown
    assert len(reads) == 2


def test_progress_false_and_study_runs_print_nothing(tmp_path, capsys):
    run_recipe(_recipe(tmp_path / "a", progress=False, tensorboard=False), quiet=True)
    assert capsys.readouterr().err == ""
    run_recipe(_recipe(tmp_path / "b", epochs=3, tensorboard=False), quiet=True)
    assert capsys.readouterr().err.count("ce [main] epoch ") == 3
    with silenced():  # what study workers do
        run_recipe(_recipe(tmp_path / "c", tensorboard=False), quiet=True)
    assert capsys.readouterr().err == ""


def test_loggers_csv_and_the_tensorboard_switch(tmp_path):
    run_recipe(_recipe(tmp_path / "a", loggers=["csv"], progress=False), quiet=True)
    run = tmp_path / "a" / "ce" / "seed0"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    recs = _records(run)
    assert [float(r["test/top1"]) for r in rows] == [r["test/top1"] for r in recs]
    assert [float(r["train/loss"]) for r in rows] == [r["train/loss"] for r in recs]
    assert not (run / "tb").exists()  # loggers: [csv] replaces the default [tensorboard]
    run_recipe(_recipe(tmp_path / "b", progress=False), quiet=True)
    assert (tmp_path / "b" / "ce" / "seed0" / "tb").is_dir()  # the default
    run_recipe(_recipe(tmp_path / "c", loggers=["tensorboard", "csv"], tensorboard=False, progress=False), quiet=True)
    assert not (tmp_path / "c" / "ce" / "seed0" / "tb").exists()  # the older switch still turns it off
    with pytest.raises(KDLabError, match=r"train.loggers: unknown logger 'wandbb': did you mean 'wandb'"):
        _recipe(tmp_path, loggers=["wandbb"])


def test_a_missing_tracker_library_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(KDLabError, match=r"train.loggers: wandb is not installed: pip install 'kdlab\[wandb\]'"):
        run_recipe(_recipe(tmp_path, loggers=["wandb"], progress=False), quiet=True)


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_recipe(_recipe(tmp_path, loggers=["wandb"], tensorboard=False, progress=False), quiet=True)
    run = tmp_path / "ce" / "seed0"
    rid = (run / "wandb_id.txt").read_text().strip()
    files = list((run / "wandb").glob(f"offline-run-*-{rid}/run-{rid}.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()  # the offline record holds each logged key and value
    last = _records(run)[-1]
    assert b"test/top1" in data and json.dumps(last["test/top1"]).encode() in data
    assert json.dumps(last["train/loss"]).encode() in data


def test_mlflow_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    run_recipe(_recipe(tmp_path, epochs=3, loggers=["mlflow"], tensorboard=False, progress=False), quiet=True)
    run = tmp_path / "ce" / "seed0"
    rid = (run / "mlflow_run_id.txt").read_text().strip()
    client = MlflowClient(store.as_uri())
    hist = sorted((m.step, m.value) for m in client.get_metric_history(rid, "test/top1"))
    assert hist == [(r["global_epoch"], r["test/top1"]) for r in _records(run)]
    info = client.get_run(rid)
    assert info.data.params["schedule.epochs"] == "3" and info.info.status == "FINISHED"
    assert info.info.run_name == "ce-seed0"


def test_task_bar_lines_per_tenth_a_bar_when_asked_and_nothing_when_off():
    import io

    from rich.console import Console

    from kdlab.engine import progress as P

    seen: list[str] = []
    bar = P.TaskBar("decoding x", 1000, lines=seen.append, unit="images")  # not a terminal under pytest
    for _ in range(40):
        bar.advance(25)
    bar.stop()
    assert [s.split(": ")[1].split(" ")[0] for s in seen] == [f"{p}%" for p in range(10, 101, 10)]
    assert "images/s" in seen[0] and seen[-1].endswith("0 s left)")
    off: list[str] = []
    quiet = P.TaskBar("x", 10, setting=False, lines=off.append)
    quiet.advance(10)
    assert off == [] and quiet.bar is None
    out = io.StringIO()
    shown = P.TaskBar("cache", 4, setting=True, lines=off.append, console=Console(file=out, force_terminal=True))
    assert shown in P._ACTIVE  # Ctrl-C stops it
    shown.advance(4)
    shown.stop()
    assert off == [] and shown not in P._ACTIVE and "cache" in out.getvalue()
