"""Run-folder locks: two real processes on one folder (a lock holder and `kdlab run`), and on one untrained
teacher (issue 15, item 1)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.engine.lock import folder_lock, holder, lock_path
from kdlab.errors import KDLabError

TEACHER = (
    "name: teacher\nout: runs/teachers\ndata: {name: digits, batch_size: 128, kwargs: {train_subset: 300}}\n"
    "student: {name: smallcnn, kwargs: {width: 0.5}}\nschedule: {epochs: 2}\ntrain: {tensorboard: false}\n"
)
STUDENT = (
    "data: {name: digits, batch_size: 128, kwargs: {train_subset: 300}}\n"
    "student: {name: smallcnn, kwargs: {width: 0.25}}\nschedule: {epochs: 1}\ntrain: {tensorboard: false}\n"
    "teacher: {run: runs/teachers/teacher/seed0, recipe: teacher.yaml}\n"
    "objective: {ce: {weight: 0.1}, kd: {}}\nout: runs\n"
)


def _kdlab(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "KDLAB_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kdlab.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _epochs(run: Path) -> list[int]:
    return [json.loads(ln)["global_epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]


def test_lock_names_its_holder_and_is_reentrant(tmp_path):
    run = tmp_path / "runs" / "kd" / "seed0"
    other = _holder(run, 30)
    try:
        with pytest.raises(KDLabError, match=rf"in use by pid {other.pid} on .*--wait"), folder_lock(run):
            pass
        assert holder(run)["pid"] == other.pid
    finally:
        other.kill()
        other.wait()
    # the holder was killed: the kernel released its flock, so the lock file it left is stale and taken over
    assert lock_path(run).exists()
    with folder_lock(run):
        with folder_lock(run):  # re-entrant: a run that trains its own teacher folder does not block itself
            assert holder(run)["pid"] == os.getpid()


def _holder(run: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the run folder's lock for ``seconds`` (a live run, as far as locks go)."""
    code = (
        "import time; from kdlab.engine.lock import folder_lock\n"
        f"with folder_lock({str(run)!r}):\n    print('held', flush=True); time.sleep({seconds})\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_run_on_a_locked_folder_fails_in_one_line_or_waits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        STUDENT.replace("teacher: {run: runs/teachers/teacher/seed0, recipe: teacher.yaml}\n", "").replace(
            "kd: {}", "ce2: {term: ce, weight: 0.9}"
        )
    )
    run = tmp_path / "runs" / "run" / "seed0"
    other = _holder(run, 3.0)
    try:
        for flag in ([], ["--force"]):
            assert main(["run", "s.yaml", *flag]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"in use by pid {other.pid}" in err
            assert ("does not stop a live run" in err) == bool(flag)
        assert not run.exists()
        assert main(["run", "s.yaml", "--wait"]) == 0  # queues behind the holder, then trains
    finally:
        other.kill()
        other.wait()
    assert _epochs(run) == [1]


def test_two_processes_on_one_untrained_teacher_train_it_once(tmp_path, monkeypatch):
    """Another process starts a student on an untrained teacher; while it trains that teacher, this process
    starts a second student on it: the teacher is trained once, and the second student waits and reuses it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.yaml").write_text(TEACHER)
    (tmp_path / "kd.yaml").write_text("name: kd\n" + STUDENT)
    (tmp_path / "kd2.yaml").write_text("name: kd2\n" + STUDENT)
    teacher = tmp_path / "runs" / "teachers" / "teacher" / "seed0"
    p = _kdlab("run", "kd2.yaml", cwd=tmp_path)
    deadline = time.time() + 120
    while not (teacher / "recipe.yaml").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the other process has started training the teacher
    assert not (teacher / "summary.json").exists()
    assert main(["run", "kd.yaml"]) == 0
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert len(json.loads((teacher / "env.json").read_text())["runs"]) == 1  # trained once, by one process
    assert _epochs(teacher) == [1, 2]
    assert _epochs(tmp_path / "runs" / "kd" / "seed0") == [1]
    assert _epochs(tmp_path / "runs" / "kd2" / "seed0") == [1]


def test_without_flock_a_dead_holders_lock_is_stale(tmp_path, monkeypatch):
    """Where flock is unsupported (some network file systems) the lock is an exclusive-create file: one whose
    pid is dead on this host is stale and taken over; a live holder is named."""
    import errno
    import socket

    import kdlab.engine.lock as lock

    def no_flock(path):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock, "_try_flock", no_flock)
    run = tmp_path / "runs" / "kd" / "seed0"
    lockfile = lock_path(run).with_suffix(".lockfile")
    lockfile.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lockfile.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0}))
    with folder_lock(run):
        assert holder(run)["pid"] == os.getpid()
    assert not lockfile.exists()  # released
    lockfile.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": 0}))
    with pytest.raises(KDLabError, match=f"in use by pid {os.getppid()} on {socket.gethostname()}"):
        with folder_lock(run):
            pass
