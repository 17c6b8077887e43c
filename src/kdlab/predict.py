"""Use a trained student: ``kdlab predict`` on raw inputs and ``kdlab eval`` on a dataset.

Both apply the preprocessing recorded with the run or the export (``kdlab/preprocess.py``), never the
statistics of the data they are given: a student expects the normalisation it was trained with.
Inputs to ``predict`` are read by suffix (``READERS``): ``.npy``/``.npz`` arrays of raw inputs (the training
scale, e.g. digits in [0, 1]; uint8 images are divided by 255), image files or folders of them (converted
to the recorded channels and size, pixels / 255), and text files (one input per line) for text students.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data import make_loader
from kdlab.data.folder import IMAGE_EXTENSIONS, load_image
from kdlab.data.text import load_tokenizer, tokenize
from kdlab.engine.checkpoint import atomic_write
from kdlab.engine.metrics import classification_metrics
from kdlab.engine.run import build_data, pick_device
from kdlab.errors import KDLabError
from kdlab.export import load_exported_with_record, load_run_student
from kdlab.recipe import RECIPE_SUFFIXES, load_recipe, read_file
from kdlab.runfiles import RECIPE
from kdlab.views.basic import normalize

IMAGE_CHUNK = 256


# ------------------------------------------------------------------------------------------------ students


class OnnxStudent:
    """An exported ONNX student behind the same call as a module: logits of a batch (CPU)."""

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise KDLabError(
                f"{path}: predicting with an ONNX file needs onnxruntime: pip install 'kdlab[onnx]'"
            ) from None
        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sess.run(None, {self.input: x.cpu().numpy()})[0])


def _onnx_record(path: Path) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:
        raise KDLabError(f"{path}: reading an ONNX file needs onnx: pip install 'kdlab[onnx]'") from None
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "kdlab.preprocess" not in meta:
        raise KDLabError(f"{path} has no kdlab.preprocess metadata: export it with `kdlab export --format onnx`")
    return json.loads(meta["kdlab.preprocess"])


def load_student(
    source: str | Path, weights: str = "final", device: str = "cpu"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """(callable student, preprocessing record) from a run folder, a ``.safetensors`` export or an ``.onnx``
    (ONNX Runtime on the CPU). ``device``: cpu, cuda or auto, for PyTorch students."""
    p = Path(source)
    if not p.exists():
        raise KDLabError(f"{p} not found: give a run folder, an exported .safetensors or an .onnx file")
    if p.suffix == ".onnx":
        return OnnxStudent(p), _onnx_record(p)
    try:
        dev = pick_device(device)
    except KDLabError as e:
        raise KDLabError(str(e).replace("train.device", "--device")) from None
    model, record = load_run_student(p, weights) if p.is_dir() else load_exported_with_record(p)
    return model.to(dev), record


# -------------------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """Raw inputs read from one path: a batch, a name per row, and labels when the file holds them."""

    x: torch.Tensor
    names: list[str]
    source: str
    y: torch.Tensor | None = None


def _array_inputs(arr: np.ndarray, name: str, record: dict[str, Any], y: Any = None) -> Inputs:
    shape = tuple(record["input_shape"])
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if tuple(x.shape) == shape:  # one sample
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != shape:
        raise KDLabError(
            f"{name}: inputs have shape {tuple(arr.shape)}, the student takes "
            f"N×{'×'.join(map(str, shape))} (raw scale, before normalisation)"
        )
    if record.get("input_dtype") == "int64":
        if x.is_floating_point():
            raise KDLabError(f"{name}: the student takes integer token ids, got {arr.dtype} values")
        x = x.long()
    elif x.dtype == torch.uint8 and "image" in record:
        x = x.float() / 255.0
    else:
        x = x.float()
    labels = None if y is None else torch.as_tensor(np.asarray(y)).long().reshape(-1)
    if labels is not None and len(labels) != len(x):
        raise KDLabError(f"{name}: {len(x)} inputs but {len(labels)} labels in `y`")
    return Inputs(x, [f"{name}[{i}]" for i in range(len(x))], name, labels)


def read_npy(path: Path, record: dict[str, Any]) -> Inputs:
    return _array_inputs(np.load(path, allow_pickle=False), str(path), record)


def read_npz(path: Path, record: dict[str, Any]) -> Inputs:
    """Inputs in ``x`` (or ``x_test``, as the ``arrays`` dataset names them, or the only array); labels in the
    matching ``y``/``y_test`` are used to report top-1."""
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        key = next((k for k in ("x", "x_test") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise KDLabError(f"{path}: name the inputs array `x` or `x_test` (found {', '.join(keys)})")
        labels = key.replace("x", "y", 1)
        return _array_inputs(z[key], str(path), record, z[labels] if labels in keys else None)


def _load_image_file(path: Path, record: dict[str, Any]) -> torch.Tensor:
    image = record.get("image")
    if image is None:
        raise KDLabError(f"{path}: this student does not take images (input shape {record['input_shape']})")
    from PIL import Image

    c, (h, w) = int(image["channels"]), image["size"]
    try:
        if h == w:
            t = load_image(str(path), h, c, image.get("resize", "square"))
        else:
            with Image.open(path) as im:
                a = np.array(im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR), dtype=np.uint8)
            t = torch.from_numpy(np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)))
    except OSError as e:
        raise KDLabError(f"{path}: not a readable image ({e})") from None
    return t.float() / 255.0


def read_images(paths: list[Path], record: dict[str, Any]) -> Inputs:
    names = [str(p) for p in paths]
    return Inputs(torch.stack([_load_image_file(p, record) for p in paths]), names, names[0])


def read_text(path: Path, record: dict[str, Any]) -> Inputs:
    """One input per non-empty line, tokenised with the recorded tokenizer and max_length."""
    text = record.get("text")
    if text is None:
        raise KDLabError(
            f"{path}: this student does not take text (input shape {record['input_shape']}); "
            "give .npy/.npz arrays or images"
        )

    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    ids = tokenize(lines, load_tokenizer(text["tokenizer"]), int(text["max_length"]))
    return Inputs(ids, [f"{path}:{i + 1}" for i in range(len(lines))], str(path))


READERS: dict[str, Callable[[Path, dict[str, Any]], Inputs]] = {".npy": read_npy, ".npz": read_npz, ".txt": read_text}


def read_inputs(paths: list[str | Path], record: dict[str, Any]) -> Iterator[Inputs]:
    """One ``Inputs`` per array/text file; image files (and folders, searched recursively) in one batch each."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise KDLabError(f"{p}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            for i in range(0, len(files), IMAGE_CHUNK):  # a large folder is decoded chunk by chunk
                yield read_images(files[i : i + IMAGE_CHUNK], record)
        elif not p.exists():
            raise KDLabError(f"input {p} not found")
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            yield read_images([p], record)
        elif p.suffix.lower() in READERS:
            yield READERS[p.suffix.lower()](p, record)
        else:
            known = ", ".join(list(READERS) + ["images", "folders of images"])
            raise KDLabError(f"input {p}: unknown kind {p.suffix!r}; kdlab predict reads {known}")


# ---------------------------------------------------------------------------------------------- inference


def normalise(x: torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
    """The training-time normalisation (none for token ids or datasets without mean/std)."""
    if not x.is_floating_point() or not record.get("mean"):
        return x

    return normalize(x, record["mean"], record["std"])


@torch.no_grad()
def logits_of(
    student: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, record: dict[str, Any], batch_size: int = 256
) -> torch.Tensor:
    device = next(iter(student.parameters())).device if isinstance(student, torch.nn.Module) else torch.device("cpu")
    outs = [
        student(normalise(x[i : i + batch_size].to(device), record)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0, int(record["num_classes"]))


def predict(
    source: str | Path,
    inputs: list[str | Path],
    *,
    top_k: int = 1,
    weights: str = "final",
    batch_size: int = 256,
    device: str = "cpu",
) -> dict[str, Any]:
    """Predictions for every input row: ``{"rows": [...], "accuracy": {file: top-1}}`` (accuracy only for
    ``.npz`` files that hold labels ``y``)."""
    student, record = load_student(source, weights, device)
    classes = record["classes"]
    k = max(1, min(top_k, int(record["num_classes"])))
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, float] = {}
    for batch in read_inputs(inputs, record):
        probs = logits_of(student, batch.x, record, batch_size).softmax(1)
        p, idx = probs.topk(k, dim=1)
        for name, pr, ix in zip(batch.names, p.tolist(), idx.tolist()):
            rows.append({"input": name, "top": [{"class": c, "label": classes[c], "prob": q} for q, c in zip(pr, ix)]})
        if batch.y is not None:
            accuracy[batch.source] = float((idx[:, 0] == batch.y).float().mean())
    return {"rows": rows, "accuracy": accuracy, "top_k": k}


def rows_csv(rows: list[dict[str, Any]], top_k: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["input", "class", "label", "prob"]
    for j in range(2, top_k + 1):
        head += [f"class{j}", f"label{j}", f"prob{j}"]
    w.writerow(head)
    for r in rows:
        w.writerow([r["input"]] + [v for t in r["top"] for v in (t["class"], t["label"], f"{t['prob']:.6f}")])
    return buf.getvalue()


def write_predictions(result: dict[str, Any], out: str | Path) -> Path:
    """``.json`` (rows and accuracy) or ``.csv`` (one row per input, top-k columns), written atomically."""
    out = Path(out)
    if out.suffix == ".json":
        text = json.dumps({"rows": result["rows"], "accuracy": result["accuracy"]}, indent=1)
    elif out.suffix == ".csv":
        text = rows_csv(result["rows"], result["top_k"])
    else:
        raise KDLabError(f"--out {out}: write predictions to a .csv or .json file")
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return out


# --------------------------------------------------------------------------------------------- evaluation


def eval_recipe(data: str | None, overrides: list[str], run_dir: Path, record: dict[str, Any]) -> Any:
    """A recipe whose ``data:`` block is evaluated: the run's own, a recipe file's, or ``{name: NAME}``."""
    if data is None:
        if not (run_dir / RECIPE).exists():
            raise KDLabError(f"{run_dir} is not a run folder: name the data to evaluate on with --data")
        block = read_file(run_dir / RECIPE).get("data", {})
    elif data.endswith(RECIPE_SUFFIXES):
        block = read_file(data).get("data")
        if block is None:
            raise KDLabError(f"--data {data}: the file has no `data:` block")
    else:
        block = {"name": data}
    return load_recipe({"student": record["student"], "data": block}, overrides)


def evaluate(
    run_dir: str | Path,
    data: str | None = None,
    overrides: list[str] | None = None,
    *,
    split: str = "test",
    weights: str = "final",
    batch_size: int = 1000,
    device: str = "auto",
) -> dict[str, float]:
    """Held-out metrics (top-1/top-5, NLL, ECE) of a run's (or an export's) student on a dataset's ``split``, with
    the run's normalisation. ``data``: a dataset name or a recipe file whose ``data:`` is used (default: the
    run's own)."""
    run_dir = Path(run_dir)
    student, record = load_student(run_dir, weights, device)
    ds = build_data(eval_recipe(data, overrides or [], run_dir, record))
    part = getattr(ds, split, None)
    if part is None:
        raise KDLabError(
            f"--split {split}: dataset {ds.name!r} has no {split} split (train, test, or val with data.val_fraction)"
        )
    if tuple(ds.input_shape) != tuple(record["input_shape"]):
        raise KDLabError(
            f"dataset {ds.name!r} has inputs {tuple(ds.input_shape)}, the student takes "
            f"{tuple(record['input_shape'])}: set the dataset's size/channels to match"
        )
    if ds.num_classes != record["num_classes"]:
        raise KDLabError(
            f"dataset {ds.name!r} has {ds.num_classes} classes, the student predicts {record['num_classes']}"
        )
    loader = make_loader(part, batch_size, shuffle=False, drop_last=False)
    logits, ys = [], []
    for x, y, _ in loader.iter_epoch(0):
        logits.append(logits_of(student, x, record, batch_size))
        ys.append(y.cpu())
    metrics = classification_metrics(torch.cat(logits), torch.cat(ys), prefix=f"{split}/")
    return {**metrics, "samples": float(sum(len(y) for y in ys))}


__all__ = ["READERS", "evaluate", "load_student", "predict", "read_inputs", "write_predictions"]
