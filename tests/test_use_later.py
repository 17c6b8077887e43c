"""Using a run later: preprocess.json, export without the data, predict on raw inputs, eval, ONNX.

Accuracies are compared with abs=1e-6: kdlab stores float32 means, and one sample is 1/500 or 1/12."""

import csv
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdlab.cli import main
from kdlab.data.base import Dataset, Split
from kdlab.engine import run_recipe
from kdlab.recipe import load_recipe
from kdlab.registry import DATASETS


@DATASETS.register("_test_npz", description="test-only: arrays from an .npz file (train_x, train_y, test_x, test_y)")
def _npz(*, path: str) -> Dataset:
    z = np.load(path)
    x = torch.from_numpy(z["train_x"])
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return Dataset(
        "_test_npz",
        Split(x, torch.from_numpy(z["train_y"])),
        Split(torch.from_numpy(z["test_x"]), torch.from_numpy(z["test_y"])),
        10,
        tuple(flat.mean(1).tolist()),
        tuple(flat.std(1).tolist()),
        classes=[f"digit{i}" for i in range(10)],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch digits student trained from an .npz file that the tests then delete or move."""
    from kdlab.data import build_dataset

    root = tmp_path_factory.mktemp("use")
    ds = build_dataset("digits")
    data = root / "data" / "digits.npz"
    data.parent.mkdir()
    np.savez(
        data, train_x=ds.train.x.numpy(), train_y=ds.train.y.numpy(), test_x=ds.test.x.numpy(), test_y=ds.test.y.numpy()
    )
    recipe = load_recipe(
        {
            "name": "ce",
            "data": {"name": "_test_npz", "kwargs": {"path": str(data)}, "batch_size": 128},
            "student": {"name": "smallcnn", "kwargs": {"width": 0.25}},
            "schedule": {"epochs": 2, "milestones": []},
            "train": {"tensorboard": False, "progress": False},
        }
    )
    run = root / "run"
    summary = run_recipe(recipe, run_dir=run, quiet=True)
    np.savez(root / "test.npz", x_test=ds.test.x.numpy(), y_test=ds.test.y.numpy())  # as the arrays dataset names them
    return {
        "root": root,
        "run": run,
        "data": data,
        "summary": summary,
        "test_x": ds.test.x,
        "test_y": ds.test.y,
        "train_x": ds.train.x,
    }


def _reference_logits(run, x):
    """The run's student on inputs normalised with mean/std computed here from the training arrays."""
    from kdlab.models import build_model

    rec = json.loads((run / "preprocess.json").read_text())
    model = build_model("smallcnn", num_classes=10, input_shape=(1, 8, 8), width=0.25)
    model.load_state_dict(load_file(str(run / "student.safetensors")))
    return model.eval(), rec


def test_preprocess_json_records_what_the_student_needs(trained):
    rec = json.loads((trained["run"] / "preprocess.json").read_text())
    x = trained["train_x"].numpy().astype(np.float64)
    assert rec["input_shape"] == [1, 8, 8] and rec["input_dtype"] == "float32" and rec["num_classes"] == 10
    assert rec["mean"] == pytest.approx([x.mean()], abs=1e-9)
    assert rec["std"] == pytest.approx([x.std(ddof=1)], abs=1e-9)
    assert rec["classes"] == [f"digit{i}" for i in range(10)]
    assert rec["student"]["name"] == "smallcnn" and rec["student"]["kwargs"] == {"width": 0.25}
    assert rec["image"] == {"channels": 1, "size": [8, 8], "resize": "square"}


def test_predict_on_raw_inputs_gives_the_runs_test_accuracy(trained, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    test_npz = str(trained["root"] / "test.npz")
    assert main(["predict", str(trained["run"]), test_npz, "--out", str(out), "--top-k", "3"]) == 0
    rows = list(csv.DictReader(out.open()))
    pred = torch.tensor([int(r["class"]) for r in rows])
    acc = float((pred == trained["test_y"]).float().mean())
    assert len(rows) == 500 and acc == pytest.approx(trained["summary"]["final"]["test/top1"], abs=1e-6)
    assert rows[0]["label"] == f"digit{rows[0]['class']}" and {"class3", "prob3"} <= set(rows[0])
    assert float(rows[0]["prob"]) >= float(rows[0]["prob2"]) >= float(rows[0]["prob3"])
    assert f"top-1 on {trained['root'] / 'test.npz'} (its labels): {100 * acc:.2f}%" in capsys.readouterr().err
    # the independent path: normalise here with numpy statistics, run the bare network
    model, rec = _reference_logits(trained["run"], trained["test_x"])
    x = trained["train_x"].numpy().astype(np.float64)
    ref = model((trained["test_x"] - float(x.mean())) / float(x.std(ddof=1))).argmax(1)
    assert torch.equal(ref, pred)


def test_export_needs_neither_the_data_nor_the_training_directory(trained, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(trained["run"], moved)
    data_backup = tmp_path / "backup.npz"
    shutil.move(trained["data"], data_backup)  # the training data is gone
    try:
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        assert main(["export", str(moved), "--out", "s.safetensors"]) == 0
        assert main(["predict", "s.safetensors", str(trained["root"] / "test.npz")]) == 0
        assert main(["eval", "s.safetensors", "--data", "digits"]) == 0  # an export, on a named dataset
    finally:
        shutil.move(data_backup, trained["data"])
    out = capsys.readouterr().out
    lines = out[: out.index("{")].splitlines()
    assert lines[0] == "exported student weights (no teacher, no connectors) to s.safetensors"
    preds = [int(r["class"]) for r in csv.DictReader(lines[1:])]
    assert json.loads(out[out.index("{") :])["test/top1"] == pytest.approx(trained["summary"]["final"]["test/top1"])
    acc = float((torch.tensor(preds) == trained["test_y"]).float().mean())
    assert acc == pytest.approx(trained["summary"]["final"]["test/top1"], abs=1e-6)


def test_predict_reads_image_files_with_the_recorded_channels_and_size(trained, tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setattr("kdlab.predict.IMAGE_CHUNK", 4)  # the folder is decoded in two chunks

    x = (trained["test_x"][:6] * 255).round().to(torch.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):  # saved as RGB 16x16: predict converts to 1 channel and 8x8 as recorded
        Image.fromarray(x[i, 0].numpy(), "L").resize((8, 8)).convert("RGB").save(folder / f"{i}.png")
    np.save(tmp_path / "same.npy", x.numpy())  # uint8 raw images: divided by 255, as image files are
    assert main(["predict", str(trained["run"]), str(folder), str(tmp_path / "same.npy")]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["input"] for r in rows[:6]] == [str(folder / f"{i}.png") for i in range(6)]
    assert [r["class"] for r in rows[:6]] == [r["class"] for r in rows[6:]]


def test_eval_on_the_runs_data_and_on_a_named_dataset(trained, tmp_path, capsys):
    final = trained["summary"]["final"]
    assert main(["eval", str(trained["run"])]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["test/top1"] == pytest.approx(final["test/top1"], abs=1e-6)
    assert m["test/nll"] == pytest.approx(final["test/nll"], rel=1e-5) and m["samples"] == 500
    # the built-in digits set holds the same test images: same metrics through the run's normalisation
    assert main(["eval", str(trained["run"]), "--data", "digits", "--weights", "best"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["test/top1"] == pytest.approx(trained["summary"]["best"]["test/top1"], abs=1e-6)
    small = tmp_path / "small.npz"  # 4x4 images: a clear error, not a shape crash inside the network
    rng = np.random.default_rng(0)
    np.savez(
        small,
        train_x=rng.random((3, 1, 4, 4), np.float32),
        train_y=np.zeros(3, np.int64),
        test_x=rng.random((3, 1, 4, 4), np.float32),
        test_y=np.zeros(3, np.int64),
    )
    (tmp_path / "d.yaml").write_text(f"data: {{name: _test_npz, kwargs: {{path: {small}}}}}\n")
    assert main(["eval", str(trained["run"]), "--data", str(tmp_path / "d.yaml")]) == 2
    assert "has inputs (1, 4, 4), the student takes (1, 8, 8)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "RUN", "nothing.npy"], "input nothing.npy not found"),
        (["predict", "RUN", "WRONG"], "the student takes N×1×8×8"),
        (["predict", "RUN", "T.txt"], "does not take text"),
        (["export", "RUN", "--out", "x.bin", "--format", "tflite"], "--format 'tflite' is not known"),
        (["predict", "nowhere", "x.npy"], "nowhere not found"),
        pytest.param(
            ["eval", "RUN", "--device", "cuda"],
            "--device: cuda requested but no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present"),
        ),
    ],
)
def test_use_errors_are_one_line(trained, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 8, 8), np.float32))
    (tmp_path / "T.txt").write_text("hello\n")
    argv = [str(trained["run"]) if a == "RUN" else ("wrong.npy" if a == "WRONG" else a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_export_onnx_equals_torch(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "s.onnx"
    assert main(["export", str(trained["run"]), "--out", str(out), "--format", "onnx"]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    model, rec = _reference_logits(trained["run"], trained["test_x"])
    x = ((trained["test_x"] - rec["mean"][0]) / rec["std"][0]).float()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]  # 500 rows: the batch axis is dynamic
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-5
    # the ONNX file carries the preprocessing: predict works from it alone
    assert main(["predict", str(out), str(trained["root"] / "test.npz")]) == 0
    preds = [int(r["class"]) for r in csv.DictReader(capsys.readouterr().out.splitlines())]
    assert preds == want.argmax(1).tolist()


def test_predict_text_lines_with_the_recorded_tokenizer(tmp_path, capsys):
    pytest.importorskip("transformers")
    import inspect

    from transformers import BertTokenizerFast

    words = ["good", "great", "love", "bad", "awful", "hate", "the", "car", "was", "it"]
    tok_dir = tmp_path / "tok"
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{key: str(tmp_path / "vocab.txt")}, do_lower_case=True).save_pretrained(str(tok_dir))
    rng = np.random.default_rng(0)
    glue = tmp_path / "glue"
    glue.mkdir()
    dev = []
    for name, n in (("train.tsv", 40), ("dev.tsv", 12)):
        rows = []
        for i in range(n):
            mood = words[3 * (i % 2) : 3 * (i % 2) + 3]  # positive words for label 0, negative for 1
            sent = " ".join(rng.choice(mood, 2).tolist() + rng.choice(words[6:], 3).tolist())
            rows.append((sent, i % 2))
        (glue / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
        dev = rows
    data = {"root": str(glue), "tokenizer": str(tok_dir), "max_length": 12}
    recipe = load_recipe(
        {
            "name": "txt",
            "data": {"name": "glue", "kwargs": data, "batch_size": 8},
            "student": {"name": "bag_of_embeddings", "kwargs": {"tokenizer": str(tok_dir), "embed_dim": 16}},
            "optim": {"name": "adamw", "lr": 1e-2},
            "schedule": {"epochs": 2, "name": "constant"},
            "train": {"tensorboard": False, "progress": False},
        }
    )
    run = tmp_path / "run"
    summary = run_recipe(recipe, run_dir=run, quiet=True)
    rec = json.loads((run / "preprocess.json").read_text())
    assert rec["text"] == {"tokenizer": str(tok_dir.resolve()), "max_length": 12} and rec["input_dtype"] == "int64"
    (tmp_path / "dev.txt").write_text("".join(s + "\n" for s, _ in dev))
    assert main(["predict", str(run), str(tmp_path / "dev.txt"), "--out", str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [r["input"] for r in rows] == [f"{tmp_path / 'dev.txt'}:{i + 1}" for i in range(12)]
    acc = np.mean([r["top"][0]["class"] == y for r, (_, y) in zip(rows, dev)])
    assert acc == pytest.approx(summary["final"]["test/top1"], abs=1e-6)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):  # token ids through ONNX
        assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "t.onnx")]) == 0
        out = str(tmp_path / "o.json")
        assert main(["predict", str(tmp_path / "t.onnx"), str(tmp_path / "dev.txt"), "--out", out]) == 0
        onnx_rows = json.loads((tmp_path / "o.json").read_text())["rows"]
        assert [r["top"][0]["class"] for r in onnx_rows] == [r["top"][0]["class"] for r in rows]


def test_a_run_from_before_preprocess_json_rebuilds_it_once(trained, tmp_path):
    from kdlab.export import export_run

    old = tmp_path / "old"
    shutil.copytree(trained["run"], old)
    (old / "preprocess.json").unlink()
    export_run(old, tmp_path / "s.safetensors")  # the data is still there: read once, then recorded
    assert json.loads((old / "preprocess.json").read_text()) == json.loads(
        (trained["run"] / "preprocess.json").read_text()
    )
