"""Export a run's student for use outside kdlab: bare weights in safetensors, or an ONNX graph.

Both carry the run's preprocessing record (``kdlab.preprocess``: model spec including inserted layers such
as letKD's, classes, input shape, normalisation, tokenizer; see ``kdlab/preprocess.py``) in their metadata,
read from the run folder's ``preprocess.json``, so exporting needs neither the training data nor the
training directory. The teacher, connectors, templates and every other training-only piece are left
behind; ``load_exported`` rebuilds the student with the model zoo alone. Formats live in ``EXPORTERS``
(name -> function(model, record, out, source) -> message); ``--format`` picks one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from kdlab.engine.checkpoint import save_weights
from kdlab.errors import KDLabError
from kdlab.models.hf import save_pretrained_classifier
from kdlab.preprocess import build_student
from kdlab.preprocess import read as read_preprocess
from kdlab.runfiles import WEIGHTS

ONNX_HINT = "pip install 'kdlab[onnx]' (onnx, onnxruntime)"

Exporter = Callable[[nn.Module, dict[str, Any], Path, str], str]
EXPORTERS: dict[str, Exporter] = {}


def exporter(name: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        return fn

    return deco


def load_run_student(run_dir: str | Path, weights: str = "final") -> tuple[nn.Module, dict[str, Any]]:
    """(student in eval mode with the run's final or best weights, preprocessing record) from a run folder."""
    run_dir = Path(run_dir)
    if weights not in WEIGHTS:
        raise KDLabError(f"weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
    src = run_dir / WEIGHTS[weights]
    if not src.exists():
        raise KDLabError(
            f"{src} not found: is {run_dir} a finished kdlab run? (`kdlab run --resume {run_dir}` finishes it)"
        )
    record = read_preprocess(run_dir)
    model = build_student(record)
    _load_state(model, src)
    return model.eval(), record


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except Exception as e:  # truncated or not safetensors
        raise KDLabError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise KDLabError(f"{path}: weights do not fit the recorded student ({first})") from None


def export_run(run_dir: str | Path, out: str | Path, weights: str = "final", format: str = "safetensors") -> Path:
    """Write the run's student to ``out`` in ``format``; returns the path."""
    return export_with_message(run_dir, out, weights, format)[0]


def export_with_message(
    run_dir: str | Path, out: str | Path, weights: str = "final", format: str = "safetensors"
) -> tuple[Path, str]:
    if format not in EXPORTERS:
        raise KDLabError(f"--format {format!r} is not known; choose one of {', '.join(sorted(EXPORTERS))}")
    model, record = load_run_student(run_dir, weights)
    out = Path(out)
    msg = EXPORTERS[format](model, record, out, str(Path(run_dir).resolve()))
    return out, msg


def _metadata(record: dict[str, Any], source: str) -> dict[str, str]:
    """The record, plus the flat keys of the first export format (kept for files read by older code)."""
    return {
        "kdlab.preprocess": json.dumps(record),
        "kdlab.model": json.dumps(record["student"]),
        "kdlab.num_classes": str(record["num_classes"]),
        "kdlab.input_shape": json.dumps(record["input_shape"]),
        "kdlab.mean": json.dumps(record["mean"]),
        "kdlab.std": json.dumps(record["std"]),
        "kdlab.dataset": record["dataset"],
        "kdlab.source": source,
    }


@exporter("safetensors")
def export_safetensors(model: nn.Module, record: dict[str, Any], out: Path, source: str) -> str:
    save_weights(out, model.state_dict(), metadata=_metadata(record, source))
    return f"exported student weights (no teacher, no connectors) to {out}"


def example_input(record: dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    """Inputs as the student sees them: normalised floats ~N(0, 1), or token ids (small, valid ids)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *record["input_shape"])
    if record.get("input_dtype") == "int64":
        return torch.randint(1, 5, shape, generator=g)  # ids every vocabulary has (0 is usually padding)
    return torch.randn(shape, generator=g)


@exporter("onnx")
def export_onnx(model: nn.Module, record: dict[str, Any], out: Path, source: str) -> str:
    """``torch.onnx.export`` with a dynamic batch axis (input ``input``: normalised inputs or token ids; output
    ``logits``); the record goes into the model's metadata_props. Then ONNX Runtime's logits are compared
    with PyTorch's on a batch of another size, where onnxruntime is installed."""
    try:
        import onnx
    except ImportError:
        raise KDLabError(f"--format onnx needs the onnx package: {ONNX_HINT}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    x = example_input(record, 2)
    tmp = out.with_name(f".{out.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: seconds, and no onnxscript needed
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        except Exception as first:  # noqa: BLE001  (torch versions without it, or a graph it cannot trace)
            try:
                torch.onnx.export(
                    model,
                    (x,),
                    str(tmp),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    dynamo=True,
                )
            except Exception as e:  # noqa: BLE001
                tmp.unlink(missing_ok=True)
                why = f"{type(first).__name__}: {str(first).splitlines()[0][:200]}"
                raise KDLabError(
                    f"torch.onnx.export failed for this student ({why}; dynamo: {str(e).splitlines()[0][:200]})"
                ) from None
    proto = onnx.load(str(tmp))
    for k, v in _metadata(record, source).items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    diff = onnx_max_difference(model, record, out)
    if diff is None:
        return f"exported ONNX student to {out} (onnxruntime not installed: outputs not checked; {ONNX_HINT})"
    if diff > 1e-4:
        raise KDLabError(
            f"{out}: ONNX Runtime's logits differ from PyTorch's by {diff:.2e} (> 1e-4); "
            "the student uses an operation the exporter does not reproduce"
        )
    return f"exported ONNX student to {out} (ONNX Runtime matches PyTorch: max |difference| {diff:.1e})"


def onnx_max_difference(model: nn.Module, record: dict[str, Any], path: Path, batch: int = 5) -> float | None:
    """Largest absolute difference between ONNX Runtime's and PyTorch's logits; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = example_input(record, batch, seed=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).float().numpy()
    return float(abs(got - want).max())


@exporter("hf")
def export_hf(model: nn.Module, record: dict[str, Any], out: Path, source: str) -> str:
    """A Hugging Face folder (``save_pretrained``, class names as ``id2label``, the run's tokenizer) for
    students with transformers' own head (``hf_classifier``, ``head: hf``), reloaded and compared."""
    tokenizer = (record.get("text") or {}).get("tokenizer")
    diff = save_pretrained_classifier(model, out, record.get("classes"), tokenizer)
    if diff > 1e-4:
        raise KDLabError(
            f"{out}: AutoModelForSequenceClassification's logits differ from the student's by {diff:.2e} (> 1e-4)"
        )
    return (
        f"exported the student as a Hugging Face folder {out} (AutoModelForSequenceClassification."
        f"from_pretrained gives the same logits: max |difference| {diff:.1e})"
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise KDLabError(f"{path} is not a readable safetensors file ({e})") from None


def exported_record(meta: dict[str, str], path: str | Path) -> dict[str, Any]:
    """The preprocessing record of an export (rebuilt from the flat keys for exports older than it)."""
    if "kdlab.preprocess" in meta:
        return json.loads(meta["kdlab.preprocess"])
    if "kdlab.model" not in meta:
        raise KDLabError(f"{path} is not a kdlab export (no kdlab.* metadata); export a run with `kdlab export`")
    shape = json.loads(meta["kdlab.input_shape"])
    classes = int(meta["kdlab.num_classes"])
    mean = json.loads(meta.get("kdlab.mean", "[]"))
    return {
        "version": 0,
        "dataset": meta.get("kdlab.dataset", ""),
        "student": json.loads(meta["kdlab.model"]),
        "num_classes": classes,
        "classes": [str(i) for i in range(classes)],
        "input_shape": shape,
        "input_dtype": "float32" if mean else "int64",
        "mean": mean,
        "std": json.loads(meta.get("kdlab.std", "[]")),
    }


def load_exported_with_record(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    record = exported_record(read_metadata(path), path)
    model = build_student(record)
    _load_state(model, Path(path))
    return model.eval(), record


def load_exported(path: str | Path) -> nn.Module:
    """The exported student, in eval mode (inputs normalised with the ``kdlab.mean``/``kdlab.std`` metadata)."""
    return load_exported_with_record(path)[0]


__all__ = [
    "EXPORTERS",
    "export_run",
    "export_with_message",
    "exporter",
    "load_exported",
    "load_exported_with_record",
    "load_run_student",
    "onnx_max_difference",
]
