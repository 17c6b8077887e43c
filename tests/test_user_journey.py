"""A new user end to end, from a project folder outside the repository, with the installed `kdlab` command only:
an own model module and an own .npz dataset named in recipe files (paths relative to those files), a teacher
trained on demand, then KD and a feature method (AT) on the user's own layer names over 3 seeds, a report, an
export, `kdlab predict` on raw inputs giving the run's accuracy, and `--resume` and `export` from the CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

KDLAB = Path(sys.executable).with_name("kdlab")

MODELS = '''
from torch import nn
from kdlab.registry import MODELS


class Net(nn.Module):
    """Two conv blocks and a linear head: the layer names a user would write in a recipe."""

    def __init__(self, num_classes, input_shape, width=8):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)).mean((2, 3)))


@MODELS.register("mynet", description="the user's small student, registered by a plugin module")
def mynet(*, num_classes, input_shape, width=4):
    return Net(num_classes, input_shape, width)
'''

RECIPES = {
    "teacher.yaml": """\
        name: teacher
        out: runs/teachers
        data: {name: arrays, kwargs: {path: ../data/digits.npz}, batch_size: 64}
        student: {name: "mymodels:Net", kwargs: {width: 16}}
        optim: {lr: 0.1}
        schedule: {epochs: 4, milestones: [3]}
        train: {tensorboard: false, progress: false}
        """,
    "pair.yaml": """\
        name: ce
        plugins: [mymodels]
        out: runs/pair
        data: {name: arrays, kwargs: {path: ../data/digits.npz}, batch_size: 64}
        student: {name: mynet, kwargs: {width: 4}}
        teacher: {run: runs/teachers/teacher/seed0, recipe: ./teacher.yaml}
        optim: {lr: 0.1}
        schedule: {epochs: 2, milestones: [1]}
        train: {tensorboard: false, progress: false}
        """,
    "kd.yaml": "name: kd\nobjective: {ce: {weight: 0.1}, kd: {weight: 0.9, tau: 4}}\n",
    "at.yaml": "name: at\nobjective: {ce: {weight: 1.0}, at: {weight: 100, layers: [block1, block2]}}\n",
}


def _kdlab(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the user has: the command
    env.update(KDLAB_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([str(KDLAB), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, f"kdlab {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_new_user_end_to_end(tmp_path):
    if not KDLAB.exists():
        pytest.skip(f"no kdlab command next to {sys.executable}")
    from sklearn.datasets import load_digits

    proj = tmp_path / "proj"
    (proj / "recipes").mkdir(parents=True)
    (proj / "data").mkdir()
    (proj / "mymodels.py").write_text(MODELS)
    for name, text in RECIPES.items():
        (proj / "recipes" / name).write_text(textwrap.dedent(text))
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # N×8×8 grayscale: the arrays dataset adds the channel
    y = digits.target.astype(np.int64)
    np.savez(proj / "data" / "digits.npz", x_train=x[:700], y_train=y[:700], x_test=x[700:900], y_test=y[700:900])
    np.savez(proj / "data" / "raw_test.npz", x=x[700:900, None], y=y[700:900])  # raw inputs, never normalised

    # teacher on demand, then KD and AT (on the user's own layer names) for 3 seeds each
    _kdlab(proj, "run", "recipes/pair.yaml", "recipes/kd.yaml", "--seeds", "0-2")
    _kdlab(proj, "run", "recipes/pair.yaml", "recipes/at.yaml", "--seeds", "0-2")
    teacher = json.loads((proj / "runs/teachers/teacher/seed0/summary.json").read_text())
    assert teacher["final"]["test/top1"] > 0.3  # 10 classes: chance is 0.1
    summaries = {
        (m, s): json.loads((proj / f"runs/pair/{m}/seed{s}/summary.json").read_text())
        for m in ("kd", "at")
        for s in range(3)
    }
    assert all(v["status"] == "finished" for v in summaries.values())
    at_log = [json.loads(line) for line in (proj / "runs/pair/at/seed0/metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("train/at") for k in at_log[-1])  # the feature term ran on block1/block2

    rep = _kdlab(proj, "report", "runs/pair", "--baseline", "kd", "--out", "report")
    table = (proj / "report" / "report.md").read_text()
    assert "kd" in table and "at" in table and "3" in table, rep.stdout

    # export and predict on raw inputs: the stored preprocessing gives the run's own test accuracy
    _kdlab(proj, "export", "runs/pair/at/seed0", "--out", "at.safetensors")
    if _kdlab(proj, "predict", "--help", check=False).returncode != 0:
        pytest.skip("`kdlab predict` is not available in this build")
    pred = _kdlab(proj, "predict", "at.safetensors", "data/raw_test.npz", "--out", "pred.csv")
    reported = 100 * summaries[("at", 0)]["final"]["test/top1"]
    assert f"{reported:.2f}%" in pred.stderr, pred.stderr

    # resume from the CLI: the saved recipe.yaml names the plugin and the module factory, so they import again
    run1 = proj / "runs/pair/at/seed1"
    (run1 / "summary.json").unlink()
    _kdlab(proj, "run", "--resume", "runs/pair/at/seed1")
    again = json.loads((run1 / "summary.json").read_text())
    assert again["final"]["test/top1"] == summaries[("at", 1)]["final"]["test/top1"]
    assert "plugins:\n- mymodels" in (run1 / "recipe.yaml").read_text()
    _kdlab(proj, "export", "runs/pair/at/seed1", "--out", "at1.safetensors")
    assert (proj / "at1.safetensors").stat().st_size > 0
