"""Issue 15 items 5-7: one-line errors for user mistakes, no silent wrong runs, no lost or private files."""

import errno
import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from kdlab.cli import main
from kdlab.data.base import Dataset, Split
from kdlab.engine import checkpoint as ckpt
from kdlab.engine.run import resume_run, run_recipe
from kdlab.errors import KDLabError
from kdlab.recipe import load_recipe
from kdlab.registry import DATASETS

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "batch_size": 64, "kwargs": {"train_subset": 130}},
    "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
    "schedule": {"epochs": 1},
    "train": {"tensorboard": False, "precision": "fp32"},
}


def tiny(tmp_path, **over):
    data = json.loads(json.dumps(TINY))
    data["out"] = str(tmp_path / "runs")
    for k, v in over.items():
        data[k] = v
    return load_recipe(data)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlab: error:") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------------- item 5: recipe files
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.yaml", "name: kd\nstudent: {name: smallcnn\n", "YAML syntax error at line"),
        ("bad.toml", "name = 'kd'\nstudent = {name = \n", "TOML syntax error"),
        ("bin.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not a text file"),
        ("self.yaml", "base: self.yaml\nname: kd\n", "includes itself"),
        ("folder.yaml", None, "is a folder"),
    ],
)
def test_bad_recipe_files_are_one_line(tmp_path, capsys, monkeypatch, name, content, message):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / name
    if content is None:
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    assert message in one_line_error(capsys, ["run", name])


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective={kd: 0.5}", "[kd] expected a mapping of parameters"),
        ("seed=1e20", "seed:"),
        ("seed=100000000000000000000", "seed:"),
        ("student.kwargs.num_classes=3", "student.kwargs: num_classes: set from the dataset"),
        ("objective={ce: {weight: -1}}", "[ce] weight: must be a finite number >= 0"),
        ("optim.momentum=5", "optim.momentum:"),
        ("optim.lr=.inf", "optim.lr:"),
        ("name=../escape", "a run name is a folder inside `out`"),
        ("name=/tmp/abs", "a run name is a folder inside `out`"),
        ("teacher={run: some/run, model: smallcnn}", "either `run:`"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, capsys, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(json.dumps(TINY))
    assert message in one_line_error(capsys, ["run", "r.yaml", override])


def test_exponent_without_dot_is_a_number():
    """YAML 1.1 reads 5e-1 as the string '5e-1'; kdlab reads it as 0.5, in files and overrides alike."""
    r = load_recipe(dict(TINY), ["student.kwargs.width=5e-1", "optim.lr=1e-2"])
    assert r.student.kwargs["width"] == 0.5 and isinstance(r.student.kwargs["width"], float)
    assert r.optim.lr == 0.01


def test_top_level_objective_ignored_by_every_stage_is_an_error():
    stages = [{"name": "a", "objective": {"ce": {}}}, {"name": "b", "objective": {"kd": {}}}]
    with pytest.raises(KDLabError, match="objective: ignored because every stage sets its own"):
        load_recipe({**TINY, "objective": {"kd": {"tau": 2}}, "stages": stages})
    load_recipe({**TINY, "objective": {"ce": {}}, "stages": stages})  # a pair file's plain CE composes
    load_recipe({**TINY, "objective": {"kd": {}}, "stages": [{"name": "a"}, *stages]})  # used by stage a


# --------------------------------------------------------------------- item 5: run files, teachers
def test_corrupt_run_files_say_force_restarts(tmp_path):
    r = tiny(tmp_path)
    run_recipe(r, quiet=True)
    run = r.run_dir()
    (run / "summary.json").write_text('{"status": "fini')
    with pytest.raises(KDLabError, match=r"summary.json is corrupt or truncated.*--force restarts"):
        run_recipe(r, quiet=True)
    (run / "summary.json").unlink()
    data = (run / "checkpoint.safetensors").read_bytes()
    (run / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(KDLabError, match=r"checkpoint.safetensors is corrupt or truncated.*--force"):
        run_recipe(r, quiet=True)
    assert run_recipe(r, existing="overwrite", quiet=True)["status"] == "finished"


def test_bad_teacher_checkpoints_are_one_line(tmp_path):
    from kdlab.models import build_model

    wide = build_model("smallcnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    torch.save(wide, tmp_path / "pickled.pt")  # a whole pickled module, not a state_dict
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(tmp_path / "wide.safetensors"))
    data = (tmp_path / "wide.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    cases = [
        ("pickled.pt", "holds pickled objects"),
        ("cut.safetensors", "corrupt or truncated"),
        ("wide.safetensors", "shape mismatch"),
    ]
    for name, message in cases:
        teacher = {"model": {"name": "smallcnn", "kwargs": {"width": 1.0}}, "checkpoint": str(tmp_path / name)}
        with pytest.raises(KDLabError, match=message) as e:
            run_recipe(
                tiny(tmp_path, name=name.split(".")[0], teacher=teacher, objective={"ce": {"weight": 0.1}, "kd": {}}),
                quiet=True,
            )
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------- item 5: disks
def test_full_disk_and_read_only_folder_keep_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(KDLabError, match="No space left on device; the previous state.bin is intact"):
        ckpt.atomic_write(target, full)
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", read_only)
    with pytest.raises(KDLabError, match="Read-only file system; choose a writable --out"):
        ckpt.atomic_write(target, lambda tmp: None)


# ---------------------------------------------------------------------------- item 6: data
def _register(name, train, test, num_classes=3, std=(1.0, 1.0)):
    if name not in DATASETS:
        DATASETS.register(name)(lambda: Dataset(name, train, test, num_classes, (0.0, 0.0), std))


@pytest.mark.parametrize(
    "case, message",
    [
        ("label", "the train split has label 5 at sample 3 (1 such); labels must be in [0, 3)"),
        ("nan", "the test split has a NaN or infinite input at sample 7 (2 samples affected)"),
        ("const", "input channel 1 is constant on the train split (std 0.0)"),
    ],
)
def test_bad_data_is_caught_before_training(tmp_path, case, message):
    g = torch.Generator().manual_seed(0)
    train = Split(torch.rand(40, 2, 4, 4, generator=g), torch.arange(40) % 3)
    test = Split(torch.rand(20, 2, 4, 4, generator=g), torch.arange(20) % 3)
    std = (0.3, 0.3)
    if case == "label":
        train.y[3] = 5
    elif case == "nan":
        test.x[7, 1, 0, 0] = float("nan")
        test.x[9, 0, 2, 1] = float("inf")
    else:
        std = (0.3, 0.0)
    _register(f"trust_{case}", train, test, std=std)
    r = tiny(tmp_path, data={"name": f"trust_{case}", "batch_size": 16}, name=case)
    with pytest.raises(KDLabError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_recipe(r, quiet=True)
    assert not (r.run_dir() / "metrics.jsonl").exists()


def test_drop_last_with_a_batch_larger_than_the_training_set(tmp_path):
    r = tiny(tmp_path, data={"name": "digits", "batch_size": 256, "drop_last": True, "kwargs": {"train_subset": 130}})
    with pytest.raises(KDLabError, match="data.batch_size: 256 is larger than the 130 training samples"):
        run_recipe(r, quiet=True)


def test_batchnorm_last_batch_of_one_is_dropped(tmp_path):
    """129 = 2 x 64 + 1: the single last sample would crash BatchNorm in training; it sits the epoch out."""
    from kdlab.data import make_loader

    split = Split(torch.zeros(129, 1), torch.zeros(129, dtype=torch.long))
    train = make_loader(split, 64, shuffle=True)
    assert len(train) == 2 and [len(y) for _, y, _ in train.iter_epoch(1)] == [64, 64]
    assert len(make_loader(split, 64, shuffle=False)) == 3  # evaluation keeps every sample
    r = tiny(tmp_path, data={"name": "digits", "batch_size": 64, "kwargs": {"train_subset": 129}})
    assert run_recipe(r, quiet=True)["status"] == "finished"


# ----------------------------------------------------------------------- item 7: small losses
def test_run_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt.atomic_write(tmp_path / "a.json", lambda tmp: open(tmp, "w").write("{}"))
        ckpt.save_weights(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
        os.umask(0o077)
        ckpt.save_state(tmp_path / "private.safetensors", {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.safetensors").stat().st_mode) == 0o600


def test_stale_tmp_removed_and_a_run_killed_before_its_recipe_resumes(tmp_path, monkeypatch):
    import kdlab.engine.run as run_mod

    r = tiny(tmp_path)
    run = r.run_dir()
    run.mkdir(parents=True)
    stale = run / ".checkpoint.safetensors.k1l2ed.tmp"
    stale.write_bytes(b"half a checkpoint")

    def killed(*a, **k):
        raise KeyboardInterrupt

    real = run_mod.build_data
    monkeypatch.setattr(run_mod, "build_data", killed)  # SIGINT while the data is being prepared
    with pytest.raises(KeyboardInterrupt):
        run_recipe(r, quiet=True)
    assert not stale.exists()
    monkeypatch.setattr(run_mod, "build_data", real)
    assert resume_run(run, quiet=True)["status"] == "finished"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_errors_mid_run_are_one_line(tmp_path, capsys, monkeypatch, code):
    """A full disk or a read-only folder while training (e.g. appending metrics.jsonl) ends in one line that
    says the checkpoint is intact and how to resume."""
    import kdlab.engine

    def fails(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path / "runs" / "metrics.jsonl"))

    monkeypatch.setattr(kdlab.engine, "run_recipe", fails)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(json.dumps(TINY))
    err = one_line_error(capsys, ["run", "r.yaml"])
    assert os.strerror(code) in err and "metrics.jsonl" in err and "--resume" in err


def test_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    import kdlab.engine.lock as lock

    real = lock.Path.mkdir

    def read_only(self, *a, **k):
        if "ro" in self.parts:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(lock.Path, "mkdir", read_only)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(json.dumps(TINY))
    err = one_line_error(capsys, ["run", "r.yaml", "--out", str(tmp_path / "ro" / "runs")])
    assert "(Read-only file system); choose a writable --out" in err


def test_broken_run_folder_recipe_and_teacher_weights_say_how_to_restart(tmp_path):
    r = tiny(tmp_path)
    run_recipe(r, quiet=True)
    run = r.run_dir()
    data = (run / "student.safetensors").read_bytes()
    (run / "student.safetensors").write_bytes(data[:100])
    student = tiny(tmp_path, name="student", teacher={"run": str(run)}, objective={"kd": {}})
    with pytest.raises(
        KDLabError,
        match=r"teacher run .*student.safetensors is corrupt or truncated.*--force` "
        "retrains it",
    ):
        run_recipe(student, quiet=True)
    (run / "recipe.yaml").write_text("name: [tiny\n")
    with pytest.raises(KDLabError, match=r"recipe.yaml: YAML syntax error at line 2.*`--force` restarts the run"):
        run_recipe(r, quiet=True)
