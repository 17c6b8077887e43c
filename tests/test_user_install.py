"""Installation: the wheel carries LICENSE, py.typed and the shipped recipes; Python 3.10 gets tomli; no extra
re-pins torch; `kdlab recipes PATH` copies the recipes out."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from kdlab.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the sources (no network, no build isolation: setuptools from the venv)."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for name in ("src", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("kdlab-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_carries_license_types_and_recipes(wheel):
    names = set(wheel.namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "kdlab/py.typed" in names and "kdlab/demo/kd.yaml" in names
    shipped = {str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").rglob("*.yaml")}
    assert shipped and {f"kdlab/recipes/{s}" for s in shipped} <= names
    assert "kdlab/registry.py" in names and "kdlab/data/arrays.py" in names


def test_metadata_never_pins_torch_and_gives_310_its_toml_parser(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [
        ln.split(":", 1)[1].strip() for ln in wheel.read(meta).decode().splitlines() if ln.startswith("Requires-Dist:")
    ]
    assert "torch>=2.3" in requires
    assert any(r.startswith("tomli") and 'python_version < "3.11"' in r for r in requires)
    for r in requires:  # extras: neither torch nor torchvision (whose exact torch pin would replace the user's torch)
        if "extra ==" in r:
            assert not r.startswith(("torch", "torchvision")), r
    assert "Requires-Python: >=3.10" in wheel.read(meta).decode()


def test_kdlab_recipes_copies_the_shipped_recipes(tmp_path, capsys):
    assert main(["recipes", str(tmp_path / "r")]) == 0
    pair = yaml.safe_load((tmp_path / "r" / "digits" / "pair.yaml").read_text())
    assert pair["teacher"]["recipe"] == "./teacher.yaml" and (tmp_path / "r" / "digits" / "teacher.yaml").exists()
    assert (tmp_path / "r" / "methods" / "kd.yaml").exists()
    assert main(["recipes", str(tmp_path / "r")]) == 2  # not over an existing folder without --force
    assert "--force" in capsys.readouterr().err
