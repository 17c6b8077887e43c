"""Typed recipes: YAML/TOML files validated by pydantic, with short defaults and ``a.b=c`` overrides.

Every error names the field path and what is allowed, in one line per problem. Terms (methods) and views
carry their own parameter models; the recipe looks them up in the registries so a new method needs no
change here.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from kdlab.engine.logger import resolve_loggers
from kdlab.errors import KDLabError, nearest, unknown_name
from kdlab.registry import DATASETS, LAYERS, MODELS, TERMS, VIEWS, import_plugins
from kdlab.schema import Strict  # re-exported: kdlab.recipe.Strict is public
from kdlab.schema import format_error as _format_error
from kdlab.schema import validate_params as _validate_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover  (Python 3.10: the same parser, from PyPI)
    import tomli as tomllib


def _component(registry_name: str, raw: Any, name_key: str = "name") -> tuple[str, dict[str, Any]]:
    """Split ``"crop"`` or ``{name: crop, padding: 2}`` into (name, params)."""
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, dict) and name_key in raw:
        params = dict(raw)
        return str(params.pop(name_key)), params
    raise ValueError(f"expected a {registry_name} name or a mapping with a {name_key!r} key, got {raw!r}")


class InsertSpec(Strict):
    """A layer from the LAYERS registry inserted after the module at ``at`` (path or ``@alias``); it becomes
    part of the student (trained, saved, exported, kept at inference), e.g. the letKD layer."""

    at: str = Field(description="module path or @alias of the student after which the layer is inserted")
    layer: str = Field(description="a LAYERS registry name (kdlab list layers)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the layer's keyword arguments")

    @field_validator("layer")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known(LAYERS, v)


class ModelSpec(Strict):
    """A model: a registry name, ``timm:NAME``, ``torchvision:NAME`` or a factory ``package.module:function``,
    optionally with layers inserted at module paths (``insert:``) and initial ``weights`` (a safetensors or
    torch state-dict file loaded into the built model before any layer is inserted; a resumed run uses its
    checkpoint instead)."""

    name: str = Field(description="a MODELS registry name, timm:NAME, torchvision:NAME or package.module:function")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="the model builder's keyword arguments (num_classes and input_shape come from the dataset)",
    )
    insert: list[InsertSpec] = Field(
        default_factory=list, description="layers inserted into the model, kept at inference"
    )
    weights: str | None = Field(
        None, description="initial weights: a safetensors or torch state-dict file, loaded before any layer is inserted"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_str(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("kwargs")
    @classmethod
    def _not_from_data(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(k for k in ("num_classes", "input_shape") if k in v)
        if taken:
            raise ValueError(f"{', '.join(taken)}: set from the dataset (data.name); remove it from kwargs")
        return v

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if ":" not in v and v not in MODELS:
            raise ValueError(str(_unknown("model", v, MODELS.names())))
        return v


class ViewSpec(Strict):
    """One augmentation view from the VIEWS registry with its validated parameters."""

    name: str = Field(description="a VIEWS registry name (kdlab list views)")
    params: Any = Field(None, description="the view's parameters, validated by its Params model")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if isinstance(data, dict) and set(data) == {"name", "params"}:
            return data
        name, params = _component("view", data)
        _known(VIEWS, name)
        return {"name": name, "params": _validate_params(VIEWS.get(name).Params, params)}

    def build(self) -> Any:
        return VIEWS.get(self.name)(self.params)

    @property
    def kind(self) -> str:
        return getattr(VIEWS.get(self.name), "kind", "augment")


def _check_kind(views: list[ViewSpec], kind: str, where: str) -> list[ViewSpec]:
    for v in views:
        if v.kind != kind:
            allowed = [e.name for e in VIEWS.entries() if getattr(e.obj, "kind", "augment") == kind]
            other = "views" if kind == "augment" else "data.augment"
            raise ValueError(f"{v.name!r} belongs in `{other}:`, not `{where}:`; allowed here: {', '.join(allowed)}")
    return views


class TermSpec(Strict):
    """One objective term: the registered term name and its validated parameters (weight included)."""

    term: str
    params: Any = None

    def build(self) -> Any:
        return TERMS.get(self.term)(self.params)


def _known(registry: Any, name: str) -> str:
    """A registered name or an importable ``package.module:name``; else the registry's one-line error."""
    try:
        registry.entry(name)
    except KDLabError as e:
        raise ValueError(str(e)) from None
    return name


def _unknown(kind: str, name: str, names: list[str]) -> KDLabError:
    return unknown_name(kind, name, names)


def _parse_objective(raw: Any) -> dict[str, TermSpec]:
    """``{kd: {weight: 0.9, tau: 4}, ce: {weight: 0.1}}``; a label other than a term name uses ``term:``."""
    if isinstance(raw, list):  # [kd, ce] or [{term: kd, ...}]
        raw = {
            (r if isinstance(r, str) else r.get("term", f"term{i}")): ({} if isinstance(r, str) else r)
            for i, r in enumerate(raw)
        }
    if not isinstance(raw, dict) or not raw:
        raise ValueError("objective must be a non-empty mapping of label -> term parameters")
    out: dict[str, TermSpec] = {}
    for label, params in raw.items():
        if isinstance(params, TermSpec):
            out[label] = params
            continue
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"[{label}] expected a mapping of parameters, e.g. {{weight: {params!r}}}; got {params!r}")
        params = dict(params or {})
        term = str(params.pop("term", label))
        try:
            _known(TERMS, term)
        except ValueError as e:
            raise ValueError(f"[{label}] {e}") from None
        try:
            out[label] = TermSpec(term=term, params=_validate_params(TERMS.get(term).Params, params))
        except ValueError as e:
            raise ValueError(f"[{label}] {e}") from None
        weight = getattr(out[label].params, "weight", 0.0)
        if isinstance(weight, (int, float)) and not 0 <= weight < float("inf"):
            raise ValueError(f"[{label}] weight: must be a finite number >= 0 (got {weight!r})")
    return out


class CacheSpec(Strict):
    """A teacher's soft-label cache (``kdlab.teachers.cached``): where it lives and how it stores outputs."""

    path: str = Field(
        "auto",
        description="auto: built on first use next to the teacher's run folder (or under "
        "$KDLAB_CACHE / ~/.cache/kdlab for a model/checkpoint teacher), then reused; otherwise the "
        "folder of a cache made by `kdlab cache build`",
    )
    views: Literal["all"] | int = Field(
        "all",
        description="all: every (crop offset, flip) of the augmentation "
        "(exact: a cached run trains on the same images as a live one); K: K views "
        "per sample drawn once and stored with their parameters (any augmentation)",
    )
    dtype: Literal["fp16", "fp32"] = Field("fp16", description="storage precision of the cached outputs")
    topk: int | None = Field(
        None,
        gt=0,
        description="store the k largest log-probabilities plus the rest mass (many classes); None: all of them",
    )
    taps: list[str] = Field(default_factory=list, description="teacher features to store too (feature methods)")
    placement: Literal["auto", "device", "memory", "mmap"] = Field(
        "auto", description="where the cache is read from during training"
    )
    seed: int = Field(0, description="draws the K views of `views: K`")
    shard: int = Field(4096, gt=0, description="samples per shard file (a build resumes shard by shard)")

    @model_validator(mode="before")
    @classmethod
    def _from_str(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @field_validator("views")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("views must be 'all' or a number of views per sample >= 1")
        return v


class TeacherSpec(Strict):
    """Where a frozen teacher comes from: a run folder (trained from ``recipe`` when missing), a model plus
    checkpoint file, or a factory ``package.module:function`` that returns a model with its weights; and
    optionally a soft-label ``cache`` (``auto`` or a folder) that serves the clean batches instead of the model.
    A cache alone (no run/model) serves logit methods; views and terms needing the teacher on new inputs
    then fail before training, naming themselves."""

    run: str | None = Field(None, description="a kdlab run folder holding the trained teacher")
    recipe: str | None = Field(
        None,
        description="the recipe that trains the teacher into `run` when it is not "
        "finished (once; other students wait for it)",
    )
    weights: Literal["final", "best"] = Field("final", description="the run's last-epoch or best-epoch weights")
    model: ModelSpec | None = Field(
        None,
        description="the teacher network (with `checkpoint`, or a factory that "
        "brings its weights) instead of a run folder",
    )
    checkpoint: str | None = Field(
        None, description="weights for `model`: safetensors, or a torch file loaded with weights_only=True"
    )
    taps: list[str] = Field(default_factory=list, description="extra teacher module paths to expose to terms")
    cache: CacheSpec | None = Field(
        None, description="a soft-label cache that serves clean batches instead of the model (auto or a folder)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if self.run is None and self.model is None:
            if self.cache is not None and self.cache.path != "auto":
                return self
            raise ValueError(
                "a teacher needs `run:` (a kdlab run folder), `model:` (with `checkpoint:` or a "
                "factory) or `cache:` (a folder made by `kdlab cache build`)"
            )
        if self.recipe is not None and self.run is None:
            raise ValueError("`recipe:` trains the teacher into `run:`; give `run:` too")
        if self.run is not None and (self.model is not None or self.checkpoint is not None):
            raise ValueError("give either `run:` (a kdlab run folder) or `model:`/`checkpoint:`, not both")
        return self


class DataSpec(Strict):
    """The dataset a run trains and is tested on, how it is batched and augmented."""

    name: str = Field("digits", description="a DATASETS registry name (kdlab list datasets) or package.module:function")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="the dataset builder's keyword arguments (root, train_subset, ...)"
    )
    batch_size: int = Field(64, gt=0, description="training batch size (per process under torchrun)")
    eval_batch_size: int = Field(1000, gt=0, description="batch size of evaluation passes")
    augment: list[ViewSpec] = Field(
        default_factory=list,
        description="per-sample augmentation views applied to every training batch, in order (kdlab list views)",
    )
    resident: bool = Field(True, description="keep the decoded dataset in memory (false: stream from disk)")
    num_workers: int = Field(0, ge=0, description="loader worker processes for streamed datasets")
    drop_last: bool = Field(False, description="drop the last, smaller training batch of each epoch")
    corruption: Any = Field(
        None,
        description="label noise / class imbalance on the training split "
        "(kdlab.data.corrupt.CorruptionSpec); the test split is untouched",
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="a validation split carved (stratified) from the "
        "training split after corruption, so model selection and early stopping see the "
        "same labels as training, never the test set",
    )
    split_seed: int = Field(0, description="seed of the stratified validation carve-out")

    @field_validator("corruption", mode="before")
    @classmethod
    def _corruption(cls, v: Any) -> Any:
        if v is None:
            return None
        from kdlab.data.corrupt import CorruptionSpec  # deferred: kdlab.data imports torch and every dataset

        return v if isinstance(v, CorruptionSpec) else _validate_params(CorruptionSpec, v)

    @field_validator("augment")
    @classmethod
    def _augment_kind(cls, v: list[ViewSpec]) -> list[ViewSpec]:
        return _check_kind(v, "augment", "data.augment")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _known(DATASETS, v)


def _one_of(kind: str, name: str, table: dict[str, Any]) -> str:
    """``name`` when it is a key of ``table`` (the one list of names, next to what they build), else a
    ValueError that names the nearest keys and all of them."""
    if name in table:
        return name
    near = nearest(name, table, n=3)
    hint = f"did you mean {', '.join(map(repr, near))}? " if near else ""
    raise ValueError(f"unknown {kind} {name!r}: {hint}use one of {', '.join(map(repr, table))}")


class OptimSpec(Strict):
    name: str = Field("sgd", description="an optimiser of kdlab.engine.optim.OPTIMIZERS: sgd or adamw")
    lr: float = Field(0.05, gt=0, description="base learning rate (the schedule multiplies it)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD, when momentum > 0)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (decoupled for adamw)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's moment coefficients")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from kdlab.engine.optim import OPTIMIZERS  # deferred: torch (and engine.optim imports this module)

        return _one_of("optimizer", v, OPTIMIZERS)


class ScheduleSpec(Strict):
    """Learning-rate schedule over ``epochs``; ``multiplier`` scales epochs and milestones together (×2, ×4)."""

    name: str = Field(
        "multistep", description="a schedule of kdlab.engine.optim.SCHEDULES: multistep, cosine or constant"
    )
    epochs: int = Field(30, gt=0, description="training epochs (before `multiplier`)")
    milestones: list[int] = Field(
        default_factory=lambda: [15, 22],
        description="multistep: epochs at which the learning rate is multiplied by `gamma`",
    )
    gamma: float = Field(0.1, gt=0, description="multistep: the factor at each milestone")
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up over this many epochs")
    multiplier: float = Field(1.0, gt=0, description="scales epochs and milestones together (x2, x4: longer schedules)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from kdlab.engine.optim import SCHEDULES  # deferred: torch (and engine.optim imports this module)

        return _one_of("schedule", v, SCHEDULES)

    @property
    def total_epochs(self) -> int:
        return max(1, round(self.epochs * self.multiplier))

    @property
    def scaled_milestones(self) -> list[int]:
        return [round(m * self.multiplier) for m in self.milestones]


class CompileSpec(Strict):
    """``train.compile`` as a block: torch.compile options for the students (and live teachers)."""

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode"
    )
    cuda_graphs: bool = Field(
        False, description="CUDA graphs (fixed shapes only: keep data.drop_last on); the same as mode reduce-overhead"
    )
    teacher: bool = Field(True, description="compile a live teacher's forward too")
    fullgraph: bool = Field(False, description="torch.compile's fullgraph (fail on graph breaks)")


class TrainSpec(Strict):
    """How the run executes: device, precision, compilation, parallelism, logging."""

    device: str = Field("auto", description="auto (CUDA when available, else CPU) or a torch device (cpu, cuda:1)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA "
        "devices with bf16, fp32 elsewhere (bf16 autocast "
        "halves the speed of these models on a CPU without "
        "AMX; benchmarks/RESULTS.md, Teacher cache)",
    )
    channels_last: bool | None = Field(
        None,
        description="None: channels_last for image inputs of at least 16x16 "
        "(1.2x faster for the CIFAR zoo on a CPU, the usual choice on GPUs); NCHW for "
        "smaller images and non-image inputs",
    )
    compile: bool | CompileSpec = Field(
        False,
        description="true, or a block {mode, cuda_graphs, teacher, "
        "fullgraph}: torch.compile the students (and live teachers)",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun: ddp (DistributedDataParallel over "
        "the students and the objectives' connectors) or fsdp",
    )
    sync_batchnorm: bool = Field(
        False, description="SyncBatchNorm across ranks (CUDA only: PyTorch has no CPU kernel for it)"
    )
    find_unused: bool | None = Field(
        None,
        description="DDP's find_unused_parameters; None: on when a step may "
        "leave parameters without a gradient (trainable connectors, extra views, a "
        "stage's trainable subset), off for plain logit KD",
    )
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    threads: int | None = Field(None, gt=0, description="CPU threads (else $KDLAB_THREADS, else one per core)")
    checkpoint_every: int = Field(1, gt=0, description="write the resume checkpoint every N epochs")
    eval_every: int = Field(1, gt=0, description="evaluate on the test (and validation) split every N epochs")
    progress: bool | None = Field(
        None, description="None: a bar only on a terminal; true: always; false: neither bar nor epoch lines"
    )
    tensorboard: bool = Field(True, description="false drops tensorboard from `loggers` (the older switch)")
    loggers: list[str] | None = Field(
        None,
        description="per-epoch trackers besides metrics.jsonl: tensorboard, csv, wandb, mlflow; None: [tensorboard]",
    )
    concat_views: bool = Field(
        False,
        description="extra views: one student pass over [x, x'] (BatchNorm "
        "statistics mix both) instead of separate passes (the authors' code for "
        "TLCutMix/CutMixPick, the faithful default)",
    )
    teacher_bf16: bool = Field(
        True,
        description="the frozen teacher runs under bf16 autocast where the device "
        "supports it; its outputs are cast to float32 before any loss",
    )
    sync_every: int = Field(
        0,
        ge=0,
        description="read the summed losses (and check them for non-finite values) "
        "every N steps; 0: once per epoch, so no host synchronisation inside a step",
    )

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            try:
                resolve_loggers(v)
            except KDLabError as e:
                raise ValueError(str(e)) from None
        return v


class StageSpec(Strict):
    """One stage of a multi-stage recipe (e.g. a FitNet hint stage, then KD). Unset blocks inherit the
    recipe's top-level ones; ``trainable`` limits training to student module paths (prefixes)."""

    name: str = Field(description="the stage's label (logs, checkpoints)")
    epochs: int | None = Field(None, gt=0, description="the stage's epochs (else its schedule's)")
    objective: dict[str, TermSpec] | None = Field(None, description="the stage's terms (else the recipe's)")
    optim: OptimSpec | None = Field(None, description="the stage's optimiser (else the recipe's)")
    schedule: ScheduleSpec | None = Field(None, description="the stage's schedule (else the recipe's)")
    trainable: list[str] | None = Field(
        None, description="student module path prefixes trained in this stage (else the whole student)"
    )

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        return None if v is None else _parse_objective(v)


class Recipe(Strict):
    """A whole run: data, student, teacher(s), objective, optimisation, execution."""

    name: str = Field("run", description="the run's folder under `out` (one sub-folder per seed)")
    seed: int = Field(
        0, ge=0, lt=2**63, description="seeds initialisation, data order and augmentation (torch.manual_seed's range)"
    )
    out: str = Field("runs", description="the folder that holds the run folders")
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported before the rest of the recipe "
        "is validated, so what they register can be named (kept in the run folder's "
        "recipe.yaml, so resume/export import them too)",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset block")
    student: ModelSpec = Field(description="the network being trained")
    cohort: list[ModelSpec] = Field(
        default_factory=list, description="more students trained alongside (online methods such as dml)"
    )
    teacher: TeacherSpec | list[TeacherSpec] | None = Field(None, description="the frozen teacher(s); null for none")
    objective: dict[str, TermSpec] = Field(
        default_factory=lambda: _parse_objective({"ce": {}}),
        description=("label -> term parameters (kdlab list methods); a label other than a term name sets `term:`"),
    )
    views: list[ViewSpec] = Field(
        default_factory=list,
        description="extra batches built from each training batch (mixup, cutmix, backward...) for the objective",
    )
    optim: OptimSpec = Field(default_factory=OptimSpec, description="the optimiser block")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="the learning-rate schedule block")
    stages: list[StageSpec] | None = Field(
        None, description="stages run in order, each overriding objective, optim, schedule or trainable modules"
    )
    train: TrainSpec = Field(default_factory=TrainSpec, description="the execution block")

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        return _parse_objective(v)

    @field_validator("views")
    @classmethod
    def _views_kind(cls, v: list[ViewSpec]) -> list[ViewSpec]:
        return _check_kind(v, "extra", "views")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        """The name is a folder under ``out``: it must not climb out of it or be an absolute path."""
        if (
            not v.strip()
            or v.startswith(("/", "\\", "~"))
            or re.match(r"^[A-Za-z]:", v)
            or ".." in re.split(r"[/\\]", v)
        ):
            raise ValueError(f"a run name is a folder inside `out`: no absolute path, `~` or `..` (got {v!r})")
        return v

    @model_validator(mode="after")
    def _objective_used(self) -> Recipe:
        """A top-level objective that every stage replaces would be silently ignored; the default (plain CE,
        as a model-pair file states it) is exempt so that pair files compose with staged method files."""
        default = _plain(_parse_objective({"ce": {}}))
        if self.stages and all(st.objective is not None for st in self.stages) and _plain(self.objective) != default:
            raise ValueError(
                "objective: ignored because every stage sets its own objective; move it into a stage or remove it"
            )
        return self

    @property
    def teachers(self) -> list[TeacherSpec]:
        if self.teacher is None:
            return []
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def run_dir(self) -> Path:
        return Path(self.out) / self.name / f"seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-safe) that validates back to an equal recipe."""
        return _plain(self)


def to_plain(obj: Any) -> Any:
    """Recipe objects (blocks, terms, views) as YAML-safe data; other values unchanged."""
    return _plain(obj)


def _plain(obj: Any) -> Any:
    if isinstance(obj, TermSpec):
        d = {"term": obj.term}
        d.update(_plain(obj.params))
        return d
    if isinstance(obj, ViewSpec):
        return {"name": obj.name, **_plain(obj.params)}
    if isinstance(obj, BaseModel):
        return {k: _plain(getattr(obj, k)) for k in type(obj).model_fields}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-1`` (an exponent without a dot) as a string; YAML 1.2 and every recipe mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_file(p: Path) -> Any:
    """A YAML/TOML file's data; unreadable, binary or malformed files are one-line KDLabErrors."""
    if p.is_dir():
        raise KDLabError(f"{p} is a folder; give a recipe file (.yaml/.yml/.toml)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KDLabError(f"{p} is not a text file; give a recipe file (.yaml/.yml/.toml)") from None
    except OSError as e:
        raise KDLabError(f"cannot read {p}: {e.strerror}") from None
    try:
        return tomllib.loads(text) if p.suffix == ".toml" else yaml_load(text)
    except tomllib.TOMLDecodeError as e:
        raise KDLabError(f"{p}: TOML syntax error: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KDLabError(f"{p}: YAML syntax error{where}: {problem}") from None


def read_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One recipe file as plain data: ``base:`` files merged under it, and every string value that starts with
    ``./`` or ``../`` made an absolute path relative to this file's folder (see ``resolve_relative``)."""
    p = Path(path)
    if not p.exists():
        raise KDLabError(f"recipe file not found: {p}")
    if p.resolve() in _chain:
        raise KDLabError(f"{p}: `base:` includes itself ({' -> '.join(str(c) for c in (*_chain, p.resolve()))})")
    data = parse_file(p)
    if not isinstance(data, dict):
        raise KDLabError(f"{p}: a recipe must be a mapping at top level")
    base = data.pop("base", None)  # a recipe may extend others, relative to its own folder
    data = resolve_relative(data, p.resolve().parent)
    merged: dict[str, Any] = {}
    for b in [base] if isinstance(base, str) else base or []:
        merged = deep_merge(merged, read_file(p.parent / b, (*_chain, p.resolve())))
    return deep_merge(merged, data) if merged else data


FILE_RELATIVE = ("./", "../")


def resolve_relative(node: Any, folder: Path) -> Any:
    """Strings starting with ``./`` or ``../`` -> absolute paths under ``folder`` (the recipe file's), in any
    field (teacher run/recipe/checkpoint, weights, data kwargs, a plugin's options). Other relative paths keep
    meaning the working directory, where outputs (``out``, ``teacher.run``) belong."""
    if isinstance(node, dict):
        return {k: resolve_relative(v, folder) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_relative(v, folder) for v in node]
    if isinstance(node, str) and node.startswith(FILE_RELATIVE):
        return str((folder / node).resolve())
    return node


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "objective":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: numbers, lists, mappings, booleans)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise KDLabError(f"override {item!r} must look like key.path=value")
        key, _, raw = item.partition("=")
        try:
            _set_path(data, key.strip().split("."), yaml_load(raw) if raw.strip() else "")
        except (IndexError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
            raise KDLabError(f"override {item!r} does not apply ({type(e).__name__}: {e})") from None
    return data


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if parts[i + 1].isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def merge_files(files: list[str | Path]) -> dict[str, Any]:
    """Recipe files merged left to right (mappings deeply, ``objective`` and lists replaced whole)."""
    data: dict[str, Any] = {}
    for f in files:
        data = deep_merge(data, read_file(f))
    return data


def validate(data: dict[str, Any], source: str = "recipe") -> Recipe:
    try:  # plugins first: the modules they name register datasets/methods/views the rest may use
        import_plugins(data.get("plugins"))
    except KDLabError as e:
        raise KDLabError(f"{source}: {e}") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_format_error(err) for err in _one_union_branch(e.errors())]
        raise KDLabError(f"{source}: " + "; ".join(lines)) from None


def _one_union_branch(errors: list[Any]) -> list[Any]:
    """``teacher`` is one teacher or a list: when a mapping fails as one teacher, pydantic also reports that it
    is not a list. Keep only the errors of the branch the input was written for."""

    def is_list_branch(err: Any) -> bool:
        return any(str(p).startswith("list[") for p in err.get("loc", ()))

    def wrong_kind(err: Any) -> bool:  # the one-teacher branch saw a list, or the list branch a mapping
        return len(err.get("loc", ())) <= 2 and err.get("type") in ("model_type", "dict_type", "list_type")

    keep = []
    for err in errors:
        field = (err.get("loc") or ("",))[0]
        same = [e for e in errors if (e.get("loc") or ("",))[0] == field and e is not err]
        other_branch = [e for e in same if is_list_branch(e) != is_list_branch(err)]
        if other_branch and wrong_kind(err):
            continue  # this branch did not apply to what was written; the other branch says what is wrong
        keep.append(err)
    return keep


def load_recipe(source: str | Path | dict[str, Any] | list[str | Path], overrides: list[str] | None = None) -> Recipe:
    """Validate a recipe from a dict, a file, or several files merged left to right (e.g. a model-pair file
    then a method file), then apply ``key=value`` overrides."""
    if isinstance(source, dict):
        data, name = copy.deepcopy(source), "recipe"
    elif isinstance(source, list):
        data, name = merge_files(source), " + ".join(str(f) for f in source)
    else:
        data, name = read_file(source), str(source)
    # ./ values left now came from overrides or a dict (files resolved theirs): the working directory's. Made
    # absolute here, so the saved recipe.yaml never holds a ./ that would later mean the run folder.
    return validate(resolve_relative(apply_overrides(data, overrides or []), Path.cwd()), name)


RECIPE_SUFFIXES = (".yaml", ".yml", ".toml")
