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

from kdlab.errors import KDLabError, nearest, unknown_name
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

    at: str
    layer: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("layer")
    @classmethod
    def _known(cls, v: str) -> str:
        from kdlab.registry import LAYERS

        return _known(LAYERS, v)


class ModelSpec(Strict):
    """A model: a registry name, ``timm:NAME``, ``torchvision:NAME`` or a factory ``package.module:function``,
    optionally with layers inserted at module paths (``insert:``) and initial ``weights`` (a safetensors or
    torch state-dict file loaded into the built model before any layer is inserted; a resumed run uses its
    checkpoint instead)."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    insert: list[InsertSpec] = Field(default_factory=list)
    weights: str | None = None

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
        from kdlab.registry import MODELS

        if ":" not in v and v not in MODELS:
            raise ValueError(str(_unknown("model", v, MODELS.names())))
        return v


class ViewSpec(Strict):
    """One augmentation view from the VIEWS registry with its validated parameters."""

    name: str
    params: Any = None

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        from kdlab.registry import VIEWS

        if isinstance(data, dict) and set(data) == {"name", "params"}:
            return data
        name, params = _component("view", data)
        _known(VIEWS, name)
        return {"name": name, "params": _validate_params(VIEWS.get(name).Params, params)}

    def build(self) -> Any:
        from kdlab.registry import VIEWS

        return VIEWS.get(self.name)(self.params)

    @property
    def kind(self) -> str:
        from kdlab.registry import VIEWS

        return getattr(VIEWS.get(self.name), "kind", "augment")


def _check_kind(views: list[ViewSpec], kind: str, where: str) -> list[ViewSpec]:
    from kdlab.registry import VIEWS

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
        from kdlab.registry import TERMS

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
    from kdlab.registry import TERMS

    if isinstance(raw, list):  # [kd, ce] or [{term: kd, ...}]
        raw = {(r if isinstance(r, str) else r.get("term", f"term{i}")): ({} if isinstance(r, str) else r)
               for i, r in enumerate(raw)}
    if not isinstance(raw, dict) or not raw:
        raise ValueError("objective must be a non-empty mapping of label -> term parameters")
    out: dict[str, TermSpec] = {}
    for label, params in raw.items():
        if isinstance(params, TermSpec):
            out[label] = params
            continue
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"[{label}] expected a mapping of parameters, e.g. {{weight: {params!r}}}; "
                             f"got {params!r}")
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

    # "auto": built on first use next to the teacher's run folder (or under $KDLAB_CACHE / ~/.cache/kdlab for a
    # model/checkpoint teacher), then reused; otherwise the folder of a cache made by `kdlab cache build`.
    path: str = "auto"
    # "all": every (crop offset, flip) of the augmentation (exact: a cached run trains on the same images as a
    # live one); K: K views per sample drawn once and stored with their parameters (any augmentation).
    views: Literal["all"] | int = "all"
    dtype: Literal["fp16", "fp32"] = "fp16"
    topk: int | None = Field(None, gt=0)  # store the k largest log-probabilities + the rest mass (many classes)
    taps: list[str] = Field(default_factory=list)  # teacher features to store too (feature methods)
    placement: Literal["auto", "device", "memory", "mmap"] = "auto"
    seed: int = 0  # draws the K views of `views: K`
    shard: int = Field(4096, gt=0)  # samples per shard file (a build resumes shard by shard)

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

    run: str | None = None
    recipe: str | None = None
    weights: Literal["final", "best"] = "final"
    model: ModelSpec | None = None
    checkpoint: str | None = None
    taps: list[str] = Field(default_factory=list)
    cache: CacheSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherSpec":
        if self.run is None and self.model is None:
            if self.cache is not None and self.cache.path != "auto":
                return self
            raise ValueError("a teacher needs `run:` (a kdlab run folder), `model:` (with `checkpoint:` or a "
                             "factory) or `cache:` (a folder made by `kdlab cache build`)")
        if self.recipe is not None and self.run is None:
            raise ValueError("`recipe:` trains the teacher into `run:`; give `run:` too")
        if self.run is not None and (self.model is not None or self.checkpoint is not None):
            raise ValueError("give either `run:` (a kdlab run folder) or `model:`/`checkpoint:`, not both")
        return self


class DataSpec(Strict):
    name: str = "digits"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(1000, gt=0)
    augment: list[ViewSpec] = Field(default_factory=list)
    resident: bool = True
    num_workers: int = Field(0, ge=0)
    drop_last: bool = False
    # Label noise / class imbalance on the training split (kdlab.data.corrupt.CorruptionSpec); test untouched.
    corruption: Any = None
    # A validation split carved (stratified, `split_seed`) from the training split after corruption, so
    # model selection and early stopping see the same noisy/imbalanced labels as training, never the test set.
    val_fraction: float = Field(0.0, ge=0, lt=1)
    split_seed: int = 0

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
        from kdlab.registry import DATASETS

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
    name: str = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

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

    name: str = "multistep"
    epochs: int = Field(30, gt=0)
    milestones: list[int] = Field(default_factory=lambda: [15, 22])
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    multiplier: float = Field(1.0, gt=0)

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

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # CUDA graphs (fixed shapes only: keep data.drop_last on): the same as mode reduce-overhead.
    cuda_graphs: bool = False
    teacher: bool = True  # compile a live teacher's forward too
    fullgraph: bool = False


class TrainSpec(Strict):
    device: str = "auto"
    # auto: bf16 autocast on CUDA devices with bf16, fp32 elsewhere (bf16 autocast halves the speed of these
    # models on a CPU without AMX; measured in benchmarks/RESULTS.md, "Teacher cache").
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto (None): channels_last for image inputs of at least 16x16 (1.2x faster for the CIFAR zoo on this CPU,
    # the usual choice on GPUs); NCHW for smaller images and non-image inputs.
    channels_last: bool | None = None
    # true, or a block {mode, cuda_graphs, teacher, fullgraph}: torch.compile the students (and live teachers).
    compile: bool | CompileSpec = False
    # Under torchrun: ddp (DistributedDataParallel over the students and the objectives' connectors) or fsdp.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    sync_batchnorm: bool = False  # SyncBatchNorm across ranks (CUDA only: PyTorch has no CPU kernel for it)
    # DDP's find_unused_parameters; None = on when a step may leave parameters without a gradient (trainable
    # connectors, extra views, a stage's trainable subset), off for plain logit KD (no graph walk per step).
    find_unused: bool | None = None
    grad_clip: float | None = Field(None, gt=0)
    threads: int | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, gt=0)
    eval_every: int = Field(1, gt=0)
    progress: bool | None = None
    tensorboard: bool = True
    # Per-epoch trackers besides metrics.jsonl (kdlab/engine/logger.py): tensorboard, csv, wandb, mlflow.
    # None = [tensorboard]; `tensorboard: false` drops tensorboard from the list (the older switch).
    loggers: list[str] | None = None
    # Extra views: one student pass over [x, x'] (BatchNorm statistics mix both, as one batch) or separate
    # passes (the authors' code for TLCutMix/CutMixPick). Separate is the faithful default.
    concat_views: bool = False
    # The frozen teacher runs under bf16 autocast where the device supports it (CUDA with bf16); its
    # outputs are cast back to float32 before any loss. Set false to keep the teacher in float32.
    teacher_bf16: bool = True
    # Losses are summed on the device and read (with the non-finite check, which names the first bad step)
    # once per epoch (0) or every N steps: no host synchronisation inside a step.
    sync_every: int = Field(0, ge=0)

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            from kdlab.engine.logger import resolve_loggers

            try:
                resolve_loggers(v)
            except KDLabError as e:
                raise ValueError(str(e)) from None
        return v


class StageSpec(Strict):
    """One stage of a multi-stage recipe (e.g. a FitNet hint stage, then KD). Unset blocks inherit the
    recipe's top-level ones; ``trainable`` limits training to student module paths (prefixes)."""

    name: str
    epochs: int | None = Field(None, gt=0)
    objective: dict[str, TermSpec] | None = None
    optim: OptimSpec | None = None
    schedule: ScheduleSpec | None = None
    trainable: list[str] | None = None

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        return None if v is None else _parse_objective(v)


class Recipe(Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, lt=2**63)  # torch.manual_seed's range
    out: str = "runs"
    # Modules imported before the rest of the recipe is validated, so what they register can be named
    # (``plugins: [mypkg.kd_extras]``); kept in the run folder's recipe.yaml, so resume/export import them too.
    plugins: list[str] = Field(default_factory=list)
    data: DataSpec = Field(default_factory=DataSpec)
    student: ModelSpec
    cohort: list[ModelSpec] = Field(default_factory=list)
    teacher: TeacherSpec | list[TeacherSpec] | None = None
    objective: dict[str, TermSpec] = Field(default_factory=lambda: _parse_objective({"ce": {}}))
    views: list[ViewSpec] = Field(default_factory=list)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    stages: list[StageSpec] | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)

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
        if not v.strip() or v.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", v) \
                or ".." in re.split(r"[/\\]", v):
            raise ValueError(f"a run name is a folder inside `out`: no absolute path, `~` or `..` (got {v!r})")
        return v

    @model_validator(mode="after")
    def _objective_used(self) -> "Recipe":
        """A top-level objective that every stage replaces would be silently ignored; the default (plain CE,
        as a model-pair file states it) is exempt so that pair files compose with staged method files."""
        default = _plain(_parse_objective({"ce": {}}))
        if self.stages and all(st.objective is not None for st in self.stages) and _plain(self.objective) != default:
            raise ValueError("objective: ignored because every stage sets its own objective; move it into a "
                             "stage or remove it")
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


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


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
    from kdlab.registry import import_plugins

    try:  # plugins first: the modules they name register datasets/methods/views the rest may use
        import_plugins(data.get("plugins"))
    except KDLabError as e:
        raise KDLabError(f"{source}: {e}") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_format_error(err) for err in e.errors()]
        raise KDLabError(f"{source}: " + "; ".join(lines)) from None


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
