"""The layers import downwards only: cli -> benchmarks -> baselines -> cdrl, never back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Each layer and the top-level modules it must not import.
FORBIDDEN = {"cdrl": {"cli", "benchmarks", "baselines"}, "baselines": {"cli", "benchmarks"}, "benchmarks": {"cli"}}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(layer):
    offenders = {str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[layer])
                 for path in sorted((REPO / layer).rglob("*.py"))}
    assert {path: roots for path, roots in offenders.items() if roots} == {}
