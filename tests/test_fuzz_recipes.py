"""Seeded fuzz over the shipped digits recipes (issue 15, item 5): whatever a user mistypes, `kdlab run` ends
with exit status 0 or with one `kdlab: error:` line, never a traceback.

Each case merges the digits pair file with one shipped method file, mutates one field (a junk value, a
deleted key, an unknown key) or the file's text (cut short, a stray character), and runs the CLI on one
epoch of 40 training images with a tiny pre-trained teacher, so a valid mutation trains for real.
"""

import copy
import os
import random
from pathlib import Path

import pytest
import yaml

from kdlab.cli import main
from kdlab.recipe import merge_files

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(
    p
    for p in (ROOT / "recipes" / "methods").glob("*.yaml")
    if p.stem in {"kd", "dkd", "dist", "at", "fitnet", "rkd", "crd", "kd_tlmixup", "dml", "sp", "pkt", "nst"}
)
JUNK = [-1, 0, 0.5, 1e20, "5e-1", "abc", None, [], {}, True, float("inf"), "../x", "/abs", 3.7, {"name": 1}]
KEEP = ("schedule.epochs", "schedule.multiplier", "epochs", "train_subset", "out", "train.device", "threads")
CASES = int(os.environ.get("KDLAB_FUZZ_CASES", "30"))  # more for a deeper local search


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _mutate(data: dict, rng: random.Random) -> tuple[str, str]:
    """A mutated recipe as YAML text, and what was done (for the failure message)."""
    paths = [p for p in _paths(data) if not any(k in ".".join(map(str, p)) for k in KEEP)]
    path = rng.choice(paths)
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    kind = rng.choice(["junk", "junk", "junk", "delete", "unknown", "text"])
    where = ".".join(map(str, path))
    if kind == "junk":
        parent[path[-1]] = value = copy.deepcopy(rng.choice(JUNK))
        what = f"{where} = {value!r}"
    elif kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
        what = f"del {where}"
    elif kind == "unknown" and isinstance(parent, dict):
        parent["lrr" if rng.random() < 0.5 else "weigth"] = 1
        what = f"unknown key beside {where}"
    else:
        text = yaml.safe_dump(data, sort_keys=False)
        i = rng.randrange(len(text))
        text = text[:i] if rng.random() < 0.5 else text[:i] + rng.choice([":", "{", "\t", "- ", "'"]) + text[i:]
        return text, f"text edit at {i}"
    return yaml.safe_dump(data, sort_keys=False), what


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    (out / "t.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "out": str(out / "runs"),
                "data": {"name": "digits", "kwargs": {"train_subset": 40}},
                "student": {"name": "smallcnn", "kwargs": {"width": 0.5}},
                "schedule": {"epochs": 1},
                "train": {"tensorboard": False, "precision": "fp32"},
            }
        )
    )
    assert main(["run", str(out / "t.yaml")]) == 0
    return out / "runs" / "t" / "seed0"


def test_mutated_recipes_never_escape_as_tracebacks(tmp_path, teacher, capsys):
    rng = random.Random(int(os.environ.get("KDLAB_FUZZ_SEED", "15")))
    failures = []
    for case in range(CASES):
        data = merge_files([ROOT / "recipes" / "digits" / "pair.yaml", rng.choice(METHODS)])
        data["teacher"] = {"run": str(teacher)} if "cohort" not in data else None
        data["data"] = {**data.get("data", {}), "kwargs": {"train_subset": 40}, "batch_size": 20}
        data["schedule"] = {**data.get("schedule", {}), "epochs": 1, "milestones": []}
        data["train"] = {"tensorboard": False, "precision": "fp32"}
        for st in data.get("stages") or []:
            st.pop("schedule", None)
            st["epochs"] = 1
        text, what = _mutate(data, rng)
        f = tmp_path / f"case{case}.yaml"
        f.write_text(text)
        try:
            status = main(["run", str(f), "--out", str(tmp_path / "runs" / str(case))])
        except BaseException as e:  # noqa: BLE001 - the point: nothing but a status may come out
            failures.append(f"case {case} ({what}): {type(e).__name__}: {e}")
            continue
        err = capsys.readouterr().err
        if status == 2 and not (err.startswith("kdlab: error:") and err.count("\n") == 1):
            failures.append(f"case {case} ({what}): not one line: {err!r}")
        elif status not in (0, 2):
            failures.append(f"case {case} ({what}): exit status {status}")
    assert not failures, "\n".join(failures)
