"""Only what pyproject.toml cannot say: the repository's top-level ``recipes/`` folder ships inside the wheel
as ``kdlab/recipes`` (``kdlab recipes PATH`` copies it out), while staying at the repository root."""

from setuptools import find_packages, setup

setup(
    packages=find_packages("src") + ["kdlab.recipes"],
    package_dir={"": "src", "kdlab.recipes": "recipes"},
    package_data={"kdlab": ["demo/*.yaml", "py.typed"], "kdlab.recipes": ["**/*.yaml"]},
)
