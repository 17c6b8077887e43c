"""Data-parallel training under torchrun: loader sharding (pure unit test) and a 2-process gloo run."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from kdlab.data.base import Split
from kdlab.data.loader import make_loader
from kdlab.engine import checkpoint as ckpt


def state_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("n,world", [(100, 2), (101, 2), (1297, 3), (10, 4)])
def test_shards_are_disjoint_equal_and_cover_the_order(n, world):
    split = Split(torch.rand(n, 3), torch.arange(n) % 5)
    full = make_loader(split, 8, shuffle=True, seed=7)
    shards = [make_loader(split, 8, shuffle=True, seed=7, rank=r, world=world) for r in range(world)]
    for epoch in (0, 1):
        order = full.order(epoch)
        parts = [s.order(epoch) for s in shards]
        assert all(len(p) == n // world for p in parts)  # equal shards: every rank runs the same steps
        # contiguous chunks of the same (seed, epoch) order; the last n % world samples are dropped
        assert torch.equal(torch.cat(parts), order[: world * (n // world)])
        assert len(set(torch.cat(parts).tolist())) == world * (n // world)  # disjoint
        seen = torch.cat([idx for s in shards for _, _, idx in s.iter_epoch(epoch)])
        assert torch.equal(seen.sort().values, order[: world * (n // world)].sort().values)
        assert len({len(s) for s in shards}) == 1
    assert not torch.equal(full.order(0), full.order(1))
    assert torch.equal(make_loader(split, 8, shuffle=True, seed=7, rank=0, world=1).order(3), full.order(3))
    with pytest.raises(ValueError):
        make_loader(split, 8, rank=2, world=2)


SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch.distributed as dist
    from kdlab.engine import run_recipe
    from kdlab.recipe import load_recipe

    def state_hash(state):
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    class Hash:
        def on_epoch_end(self, trainer, record):
            if record["global_epoch"] == 2:
                out = os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json")
                with open(out, "w") as f:
                    json.dump({"world": dist.get_world_size(), "steps": len(trainer.train_loader),
                               "student": state_hash(trainer.students[0].state_dict()),
                               "cohort": state_hash(trainer.students[1].state_dict()),
                               "wrapped": type(trainer.step_module).__name__}, f)

    run_recipe(load_recipe(json.load(open(sys.argv[1]))), callbacks=[Hash()], quiet=True)
""")


def _gloo_ok() -> bool:
    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.skipif(not _gloo_ok(), reason="torch.distributed with the gloo backend is not available")
def test_torchrun_two_ranks_train_one_run_with_identical_weights(tmp_path):
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        pytest.skip("torchrun (torch.distributed.run) is not available")
    recipe = {
        "name": "ddp",
        "out": str(tmp_path / "runs"),
        "seed": 3,
        "data": {"name": "digits", "batch_size": 128, "augment": [{"name": "crop", "padding": 1}]},
        "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
        "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
        "cohort": [{"name": "smallcnn", "kwargs": {"width": 0.25}}],  # DML peers: two students in one DDP
        "objective": {"ce": {"weight": 0.1}, "kd": {}, "dml": {}},
        "schedule": {"epochs": 2},
        "train": {"tensorboard": False, "threads": 1},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "train.py").write_text(SCRIPT)
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(tmp_path / "train.py"),
        str(tmp_path / "recipe.json"),
        str(hashes),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    runs = [p.parent for p in (tmp_path / "runs").rglob("summary.json")]
    assert len(runs) == 1
    d = runs[0]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "finished" and "test/top1" in summary["final"]
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in lines)
    assert json.loads((d / "env.json").read_text())["runs"][0]["world_size"] == 2

    r0 = json.loads((hashes / "rank0.json").read_text())
    r1 = json.loads((hashes / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == -(-(1297 // 2) // 128)  # each rank trains on half the epoch
    assert r0["student"] == r1["student"] and r0["cohort"] == r1["cohort"]  # the ranks ended with identical weights
    assert r0["wrapped"] == "DistributedDataParallel"
    assert state_hash(load_file(str(d / "student.safetensors"))) == r0["student"]  # and rank 0 saved them
    assert state_hash(load_file(str(d / "cohort1.safetensors"))) == r0["cohort"]


# ----------------------------------------------------------------------------------------- DDP = one process
DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch.distributed as dist
    from kdlab.engine import resume_run, run_recipe
    from kdlab.recipe import load_recipe

    def state_hash(state):
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    class Probe:  # every rank: the wrapped step and, at the end, hashes of its students and connectors
        def __init__(self, crash_at):
            self.crash_at = crash_at
        def on_step_end(self, trainer, state):
            if (state["global_epoch"], state["step"]) == self.crash_at:
                raise RuntimeError("simulated crash")
        def on_epoch_end(self, trainer, record):
            if record["global_epoch"] == 2 and not trainer.fsdp:  # FSDP: DTensor shards, compared via files
                objectives = trainer._prev_objectives
                out = os.path.join(sys.argv[3], f"rank{dist.get_rank()}.json")
                with open(out, "w") as f:
                    json.dump({"wrapped": type(trainer.step_module).__name__,
                               "student": state_hash(trainer.students[0].state_dict()),
                               "objectives": state_hash(objectives.state_dict())}, f)

    mode, path = sys.argv[1], sys.argv[2]
    if mode == "resume":
        resume_run(path, callbacks=[Probe(None)], quiet=True)
    else:
        crash = (1, 2) if mode == "crash" else None
        run_recipe(load_recipe(json.load(open(path))), callbacks=[Probe(crash)], quiet=True)
""")


class UnionLoader:
    """One process sees, at every step, the union of what the ranks' shards yield at that step: with
    per-sample mean losses and no BatchNorm, the gradient DDP averages over ranks is this batch's gradient."""

    def __init__(self, shards):
        self.shards = shards

    def __len__(self):
        return len(self.shards[0])

    def iter_epoch(self, epoch):
        for parts in zip(*(s.iter_epoch(epoch) for s in self.shards)):
            yield tuple(torch.cat(t) for t in zip(*parts))


def _torchrun(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(tmp_path / "ddp.py"),
        *map(str, args),
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=80)


@pytest.mark.skipif(not _gloo_ok(), reason="torch.distributed with the gloo backend is not available")
def test_ddp_two_ranks_match_one_process_and_resume_bitwise(tmp_path, monkeypatch):
    """2-rank DDP (KD + FitNet through a linear connector, the objective's trainable parameter) = one process over the
    union
    batches to fp32 summation-order tolerance (atol 1e-5 after 2 epochs); a crashed 2-rank run resumed under
    torchrun ends bitwise equal to the uninterrupted one; every rank holds the same students and connectors;
    FSDP2 (train.parallel: fsdp), crashed and resumed, ends where DDP does."""
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        pytest.skip("torchrun (torch.distributed.run) is not available")
    from kdlab.engine import run_recipe
    from kdlab.engine import trainer as trainer_mod
    from kdlab.recipe import load_recipe

    def recipe(out, batch, parallel="ddp"):
        return {
            "name": "ddp",
            "out": str(tmp_path / out),
            "seed": 5,
            "data": {"name": "digits", "batch_size": batch},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25, "batch_norm": False}},
            "teacher": {"model": {"name": "smallcnn", "kwargs": {"width": 0.5}}},
            "objective": {
                "ce": {"weight": 0.1},
                "kd": {},
                "fitnet": {"weight": 1.0, "student_layer": "flatten", "teacher_layer": "flatten"},
            },
            "schedule": {"epochs": 2},
            "optim": {"lr": 0.1},
            "train": {"tensorboard": False, "threads": 1, "progress": False, "parallel": parallel},
        }

    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    for name in ("full", "crashed", "fsdp"):
        (tmp_path / f"{name}.json").write_text(json.dumps(recipe(name, 64, "fsdp" if name == "fsdp" else "ddp")))
        (tmp_path / f"h_{name}").mkdir()
    proc = _torchrun(tmp_path, "run", tmp_path / "full.json", tmp_path / "h_full")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    proc = _torchrun(tmp_path, "crash", tmp_path / "crashed.json", tmp_path / "h_crashed")
    assert proc.returncode != 0 and "simulated crash" in proc.stderr + proc.stdout
    crashed = tmp_path / "crashed" / "ddp" / "seed5"
    assert not (crashed / "summary.json").exists()
    proc = _torchrun(tmp_path, "resume", crashed, tmp_path / "h_crashed")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # FSDP2: crashed at the same step, resumed from its gathered checkpoint (full optimiser state by name)
    proc = _torchrun(tmp_path, "crash", tmp_path / "fsdp.json", tmp_path / "h_fsdp")
    assert proc.returncode != 0 and "simulated crash" in proc.stderr + proc.stdout
    proc = _torchrun(tmp_path, "resume", tmp_path / "fsdp" / "ddp" / "seed5", tmp_path / "h_fsdp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    full = tmp_path / "full" / "ddp" / "seed5"
    h = {
        n: [json.loads((tmp_path / f"h_{n}" / f"rank{r}.json").read_text()) for r in (0, 1)]
        for n in ("full", "crashed")
    }
    assert h["full"][0]["wrapped"] == "DistributedDataParallel"
    assert h["full"][0] == h["full"][1]  # students and connectors identical on both ranks
    assert h["crashed"][0] == h["full"][0] == h["crashed"][1]  # resumed = uninterrupted, bitwise
    w_ddp = load_file(str(full / "student.safetensors"))
    assert state_hash(w_ddp) == h["full"][0]["student"]
    # FSDP: reduce-scattered mean gradients = DDP's all-reduced ones (bitwise here; asserted to 1e-6), and rank
    # 0's gathered bare copy is what it saved
    w_fsdp = load_file(str(tmp_path / "fsdp" / "ddp" / "seed5" / "student.safetensors"))
    for k in w_ddp:
        assert torch.allclose(w_fsdp[k], w_ddp[k], rtol=0, atol=1e-6), k
    fsdp_ckpt = ckpt.load_state(tmp_path / "fsdp" / "ddp" / "seed5" / "checkpoint.safetensors")
    assert sorted(fsdp_ckpt["modules"]) == sorted(ckpt.load_state(full / "checkpoint.safetensors")["modules"])

    # The single-process reference: batch 128 = the union of the two ranks' batches of 64 at every step.
    real_loader = trainer_mod.Trainer._loader

    def union_loader(self, split, shuffle=False, shard=False):
        if not shard:
            return real_loader(self, split, shuffle, shard)
        from kdlab.data import make_loader

        return UnionLoader(
            [make_loader(split, batch_size=64, shuffle=True, seed=self.recipe.seed, rank=r, world=2) for r in (0, 1)]
        )

    monkeypatch.setattr(trainer_mod.Trainer, "_loader", union_loader)
    run_recipe(load_recipe(recipe("one", 128)), quiet=True)
    w_one = load_file(str(tmp_path / "one" / "ddp" / "seed5" / "student.safetensors"))
    for k in w_one:
        assert torch.allclose(w_ddp[k], w_one[k], rtol=0, atol=1e-5), (k, (w_ddp[k] - w_one[k]).abs().max())
    m_ddp = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    m_one = [json.loads(x) for x in (tmp_path / "one" / "ddp" / "seed5" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(m_ddp, m_one):  # rank-averaged logged losses = the union batch's losses
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
        assert a["train/fitnet"] == pytest.approx(b["train/fitnet"], rel=1e-5)
