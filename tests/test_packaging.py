"""The wheel's package list names every package of the product (a forgotten one installs a broken cdrl-bench)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_product_package_is_in_the_wheel():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(REPO).parts)
               for root in ("cdrl", "baselines", "benchmarks") for init in (REPO / root).rglob("__init__.py")}
    listed = set(setuptools["packages"]) - set(setuptools["package-dir"])
    assert listed == on_disk
