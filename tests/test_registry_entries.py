"""Every registry entry, with its defaults, on a tiny input: each method and extra view trains one epoch of two
steps, each augmentation view, model and layer takes a forward/backward step, each dataset builds (from a tiny
generated file where it reads files; skipped with the reason when its files or optional package are absent).

Parametrised over the registries themselves, so a new entry is covered without writing a test. An entry that
cannot run on defaults alone (it needs a peer, an inserted layer, text) says so in NEEDS, next to the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.data import build_dataset, make_loader
from kdlab.engine.checkpoint import save_weights
from kdlab.engine.run import build_model_for, run_recipe
from kdlab.errors import KDLabError
from kdlab.models import build_model
from kdlab.recipe import ModelSpec, load_recipe
from kdlab.registry import DATASETS, LAYERS, MODELS, TERMS, VIEWS

SHAPE, CLASSES = (3, 16, 16), 10
STUDENT, TEACHER = {"name": "resnet8"}, {"name": "resnet14"}  # defaults of feature methods tap resnet stages
# recipe parts an entry needs beyond its own defaults (the shipped recipe that uses it does the same)
NEEDS = {
    "dml": {"teacher": None, "cohort": [STUDENT]},  # online: peers instead of a teacher (recipes/methods/dml.yaml)
    # letKD's layers fit their templates (k-means) on the teacher's features: fewer templates for 20 images
    "letkd_penult": {
        "student": {**STUDENT, "insert": [{"at": "@last", "layer": "letkd", "kwargs": {"templates": 8}}]},
        "objective": {"letkd_penult": {"student_layer": "layer3"}},
    },  # recipes/methods/letkd1.yaml
    "letkd_inter": {
        "student": {**STUDENT, "insert": [{"at": "layer3.0", "layer": "letkd", "kwargs": {"templates_per_class": 1}}]},
        "objective": {"letkd_inter": {"student_layer": "layer3.0", "teacher_layer": "layer3.0"}},
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 20-image train / 10-image test .npz (3×16×16, 10 classes) and a random resnet14 teacher."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    np.savez(
        root / "tiny.npz",
        x_train=rng.random((20, *SHAPE), dtype=np.float32),
        y_train=np.arange(20) % CLASSES,
        x_test=rng.random((10, *SHAPE), dtype=np.float32),
        y_test=np.arange(10) % CLASSES,
    )
    torch.manual_seed(0)
    save_weights(
        root / "teacher.safetensors", build_model(TEACHER["name"], num_classes=CLASSES, input_shape=SHAPE).state_dict()
    )
    return root


def _recipe(tiny, name: str, **parts) -> dict:
    return {
        "name": name,
        "out": str(tiny / "runs"),
        "student": STUDENT,
        "data": {"name": "arrays", "kwargs": {"path": str(tiny / "tiny.npz")}, "batch_size": 10},
        "teacher": {"model": TEACHER, "checkpoint": str(tiny / "teacher.safetensors")},
        "schedule": {"epochs": 1, "milestones": []},
        "train": {"tensorboard": False, "precision": "fp32"},
        **parts,
    }


def _train(data: dict) -> dict:
    summary = run_recipe(load_recipe(data), quiet=True)
    assert summary["status"] == "finished"
    assert 0.0 <= summary["final"]["test/top1"] <= 1.0
    return summary


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("name", TERMS.names())
def test_every_method_trains_one_epoch_on_its_defaults(tiny, name):
    needs = NEEDS.get(name, {})
    _train(
        _recipe(
            tiny,
            name,
            objective={name: {}, **needs.get("objective", {})},
            **{k: v for k, v in needs.items() if k != "objective"},
        )
    )


def _kind(name: str) -> str:
    return getattr(VIEWS.get(name), "kind", "augment")


@pytest.mark.parametrize("name", VIEWS.names())
def test_every_view_runs_on_its_defaults(tiny, name):
    if name == "backward_text":
        pytest.skip("backward_text perturbs token embeddings: tests/test_text.py runs it on text data")
    if _kind(name) == "augment":  # a batch in, the same shape out, a function of the generator alone
        x = torch.rand(4, *SHAPE)
        view = VIEWS.get(name)()
        a, b = view(x, torch.Generator().manual_seed(1)), view(x, torch.Generator().manual_seed(1))
        assert a.shape == x.shape and torch.equal(a, b)
        _train(
            _recipe(
                tiny,
                name,
                data={
                    "name": "arrays",
                    "kwargs": {"path": str(tiny / "tiny.npz")},
                    "batch_size": 10,
                    "augment": [name],
                },
                objective={"kd": {}},
            )
        )
    else:  # an extra batch of views for the objective
        _train(_recipe(tiny, name, objective={"ce": {}, "kd": {}}, views=[name]))


def _inputs(name: str) -> tuple[tuple[int, ...], torch.Tensor]:
    """The first input kind the model accepts: images, 1-D signals, token ids."""
    for shape, x in [
        ((3, 32, 32), torch.rand(2, 3, 32, 32)),
        ((1, 40), torch.rand(2, 1, 40)),
        ((16,), torch.randint(0, 100, (2, 16))),
    ]:
        try:
            build_model(name, num_classes=CLASSES, input_shape=shape)
        except KDLabError as e:
            if "input_shape" in str(e):
                continue
            pytest.skip(str(e))  # an optional local model or package is not installed
        return shape, x
    raise AssertionError(f"model {name!r} accepts none of the test inputs")


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_takes_a_training_step_on_its_defaults(name):
    shape, x = _inputs(name)
    torch.manual_seed(0)
    model = build_model(name, num_classes=CLASSES, input_shape=shape)
    out = model(x)
    assert out.shape == (2, CLASSES)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", LAYERS.names())
def test_every_layer_inserts_and_takes_a_training_step(name):
    class Data:
        num_classes, input_shape = CLASSES, SHAPE

    model = build_model_for(ModelSpec.model_validate({**STUDENT, "insert": [{"at": "@last", "layer": name}]}), Data())
    out = model(torch.rand(4, *SHAPE))
    assert out.shape == (4, CLASSES)
    torch.nn.functional.cross_entropy(out, torch.arange(4)).backward()


def _image_folder(root):
    from PIL import Image

    for split in ("train", "test"):
        for c, color in enumerate(["red", "blue"]):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 10), color).save(d / f"{i}.png")
    return {"root": str(root), "image_size": 8}


def _jpegs(folder, n=2, color="red"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 10), color).save(folder / f"{color}{i}.JPEG", format="JPEG")


def _imagenet(root):
    for split in ("train", "val"):
        for wnid, color in (("n01", "red"), ("n02", "blue")):
            _jpegs(root / split / wnid, color=color)
    return {"root": str(root), "image_size": 8}


def _tiny_imagenet(root):
    for wnid, color in (("n01", "red"), ("n02", "blue")):
        _jpegs(root / "train" / wnid / "images", color=color)
        _jpegs(root / "val" / "images", n=1, color=color)
    (root / "val" / "val_annotations.txt").write_text("red0.JPEG\tn01\nblue0.JPEG\tn02\n")
    return {"root": str(root), "image_size": 8}


# datasets that read files get a tiny generated one; those not listed build from their defaults or skip
FILES = {
    "arrays": lambda tmp: {"path": str(tmp / "tiny.npz")},
    "imagefolder": _image_folder,
    "imagenet": _imagenet,
    "tiny_imagenet": _tiny_imagenet,
}
MUST_BUILD = {"digits", "arrays", *FILES}  # no file or package beyond the test extra


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_builds_and_feeds_a_step(tiny, tmp_path, name):
    kwargs = FILES[name](tiny if name == "arrays" else tmp_path) if name in FILES else {}
    try:
        ds = build_dataset(name, **kwargs)
    except (KDLabError, ImportError) as e:
        if name in MUST_BUILD:
            raise
        pytest.skip(f"{name}: {str(e).splitlines()[0]}")
    x, y, _ = next(make_loader(ds.train, 4, shuffle=False).iter_epoch(0))  # resident and streamed splits alike
    assert len(ds.test.x) > 0 and tuple(x.shape[1:]) == tuple(ds.input_shape)
    assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    model = build_model(
        "bag_of_embeddings" if not x.is_floating_point() else "mlp",
        num_classes=ds.num_classes,
        input_shape=tuple(ds.input_shape),
    )
    torch.nn.functional.cross_entropy(model(x if not x.is_floating_point() else x.float()), y.long()).backward()
