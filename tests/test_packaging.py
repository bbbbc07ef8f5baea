"""The wheel's package list names every package of the product (a forgotten one installs a broken cdrl-bench)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_product_package_is_in_the_wheel():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(REPO).parts)
               for root in ("cdrl", "baselines", "benchmarks", "cli_commands")
               for init in (REPO / root).rglob("__init__.py")}
    listed = set(setuptools["packages"]) - set(setuptools["package-dir"])
    assert listed == on_disk


def test_the_extras_the_readme_installs_exist_and_fid_weights_holds_the_offline_inception():
    import importlib.metadata
    import re

    from packaging.requirements import Requirement

    from cdrl.evaluation.weights import FID_HELPER_PACKAGE

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = {extra for group in re.findall(r"(?:\.|cdrl-bench)\[([\w,-]+)\]", (REPO / "README.md").read_text())
             for extra in group.split(",")}
    assert "fid-weights" in named and named <= set(extras), named - set(extras)
    (requirement,) = map(Requirement, extras["fid-weights"])
    files = importlib.metadata.files(requirement.name)  # the tests' environment installs it (README)
    assert f"{FID_HELPER_PACKAGE}/default_1.pt" in {str(path) for path in files}
