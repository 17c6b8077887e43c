"""Per-epoch logs: ``metrics.jsonl`` (always; the record kdlab reads back) and the backends that
``train.loggers`` names (``LOGGERS``: tensorboard, csv, wandb, mlflow).

A backend's library is imported only when a recipe names it. ``train.tensorboard: false`` (the older
switch) removes tensorboard from the list; without ``train.loggers`` the list is ``[tensorboard]``. A
backend that fails in the middle of a run is turned off with a warning: the run and ``metrics.jsonl`` go on.
Trackers resume the same tracked run after ``kdlab run --resume`` (its id is kept in the run folder).
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdlab.errors import KDLabError, unknown_name
from kdlab.runfiles import METRICS


class Backend:
    """One destination for the per-epoch records; ``log`` gets every record (numbers, strings)."""

    def __init__(self, run_dir: Path, recipe: Any = None):
        self.run_dir, self.recipe = run_dir, recipe

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


LOGGERS: dict[str, tuple[type[Backend], str]] = {}  # name -> (backend, pip extra that installs it)


def backend(name: str, extra: str = "") -> Callable[[type[Backend]], type[Backend]]:
    def deco(cls: type[Backend]) -> type[Backend]:
        LOGGERS[name] = (cls, extra)
        return cls

    return deco


def resolve_loggers(loggers: list[str] | None, tensorboard: bool = True) -> list[str]:
    """The backends a run uses: ``train.loggers`` (default ``[tensorboard]``) less tensorboard when
    ``train.tensorboard`` is false; unknown names are a one-line error."""
    names = ["tensorboard"] if loggers is None else list(dict.fromkeys(loggers))
    for n in names:
        if n not in LOGGERS:
            raise unknown_name("logger", n, LOGGERS)
    return [n for n in names if tensorboard or n != "tensorboard"]


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "global_epoch")
    }


def _import(module: str, name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = LOGGERS[name][1]
        raise KDLabError(
            f"train.loggers: {name} is not installed: pip install 'kdlab[{extra}]' "
            f"(or drop {name!r} from train.loggers)"
        ) from None


def _run_id(path: Path, make: Callable[[], str]) -> str:
    """A tracker's run id kept in the run folder, so a resumed kdlab run continues the same tracked run."""
    if path.exists():
        return path.read_text().strip()
    rid = make()
    path.write_text(rid)
    return rid


def _label(recipe: Any, run_dir: Path) -> str:
    return f"{recipe.name}-seed{recipe.seed}" if recipe is not None else run_dir.name


def _config(recipe: Any) -> dict[str, Any]:
    return recipe.to_dict() if recipe is not None else {}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)[:500]  # MLflow's parameter values are at most 500 characters
    return out


@backend("tensorboard", extra="")
class TensorBoard(Backend):
    """TensorBoard events in ``tb/`` (scalars per global epoch)."""

    def __init__(self, run_dir: Path, recipe: Any = None):
        super().__init__(run_dir, recipe)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is a core dependency; a stripped install just loses the curves
            warnings.warn(
                "tensorboard is not installed: no TensorBoard curves (metrics.jsonl is written)", stacklevel=2
            )

    def log(self, record: dict[str, Any]) -> None:
        if self.tb is None:
            return
        for k, v in _scalars(record).items():
            self.tb.add_scalar(k, v, record["global_epoch"])
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@backend("csv", extra="")
class Csv(Backend):
    """``metrics.csv``: one row per epoch, a column per key (rewritten from ``metrics.jsonl`` each epoch, so
    columns that appear later, such as a second stage's losses, and resumed runs stay consistent)."""

    def log(self, record: dict[str, Any]) -> None:
        from kdlab.engine.checkpoint import atomic_write  # deferred: torch; recipes import this module

        rows = [json.loads(line) for line in (self.run_dir / METRICS).read_text().splitlines() if line]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
        atomic_write(self.run_dir / "metrics.csv", lambda tmp: Path(tmp).write_text(text))


@backend("wandb", extra="wandb")
class WandB(Backend):
    """Weights & Biases: project ``$WANDB_PROJECT`` (default ``kdlab``), the recipe as config, the run folder
    as ``dir``; ``WANDB_MODE=offline`` works without a network (``wandb sync`` uploads later)."""

    def __init__(self, run_dir: Path, recipe: Any = None):
        super().__init__(run_dir, recipe)
        wandb = _import("wandb", "wandb")
        rid = _run_id(run_dir / "wandb_id.txt", lambda: secrets.token_hex(4))
        kwargs = dict(
            project=os.environ.get("WANDB_PROJECT", "kdlab"),
            name=_label(recipe, run_dir),
            id=rid,
            resume="allow",
            dir=str(run_dir),
            config=_config(recipe),
        )
        try:
            self.run = wandb.init(**kwargs, reinit="create_new")  # a teacher run inside a student run: two runs
        except TypeError:  # older wandb
            self.run = wandb.init(**kwargs, reinit=True)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(_scalars(record), step=int(record["global_epoch"]))

    def close(self) -> None:
        self.run.finish()


@backend("mlflow", extra="mlflow")
class MLflow(Backend):
    """MLflow through a client (no global active run): ``$MLFLOW_TRACKING_URI`` (a server, or
    ``file:./mlruns``), experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``kdlab``), the recipe as parameters."""

    def __init__(self, run_dir: Path, recipe: Any = None):
        super().__init__(run_dir, recipe)
        _import("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient()
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdlab")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)

            def create() -> str:
                run = self.client.create_run(
                    exp_id, run_name=_label(recipe, run_dir), tags={"kdlab.run_dir": str(run_dir.resolve())}
                )
                params = _flat(_config(recipe))
                from mlflow.entities import Param

                items = [Param(k, v) for k, v in params.items()]
                for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
                    self.client.log_batch(run.info.run_id, params=items[i : i + 100])
                return run.info.run_id

            self.run_id = _run_id(run_dir / "mlflow_run_id.txt", create)
        except Exception as e:  # noqa: BLE001  (an unreachable server, a store the installed mlflow cannot open)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise KDLabError(
                f"train.loggers: mlflow could not start ({msg}); set MLFLOW_TRACKING_URI to a "
                "server or a store your mlflow install supports"
            ) from None

    def log(self, record: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["global_epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in _scalars(record).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class RunLogger:
    """``metrics.jsonl`` plus the named backends (see the module docstring)."""

    def __init__(
        self, run_dir: Path, tensorboard: bool = True, *, loggers: list[str] | None = None, recipe: Any = None
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        if recipe is not None and loggers is None:
            loggers = getattr(recipe.train, "loggers", None)
        names = resolve_loggers(loggers, tensorboard)
        self.backends: dict[str, Backend] = {}
        try:
            for n in names:
                self.backends[n] = LOGGERS[n][0](self.run_dir, recipe)
        except BaseException:
            self.close()
            raise

    def truncate(self, upto_global_epoch: int) -> None:
        """On resume, forget epochs logged after the checkpoint being resumed from."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("global_epoch", 0) <= upto_global_epoch:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name in list(self.backends):
            try:
                self.backends[name].log(record)
            except Exception as e:  # noqa: BLE001  (a tracker's failure must not end a training run)
                warnings.warn(
                    f"train.loggers: {name} failed ({type(e).__name__}: {e}); it is off for the rest of "
                    "this run (metrics.jsonl has every epoch)",
                    stacklevel=2,
                )
                self.backends.pop(name)

    def close(self) -> None:
        for name, b in list(self.backends.items()):
            try:
                b.close()
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"train.loggers: closing {name} failed ({e})", stacklevel=2)
        self.backends = {}


__all__ = ["LOGGERS", "Backend", "RunLogger", "backend", "resolve_loggers"]
