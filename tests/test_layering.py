"""The layers import downwards only: cli -> benchmarks -> baselines -> cdrl, never back up; tools/ (the gate's
maintenance scripts, not installed) sits above them all; the method core imports nothing of the orchestration
around it. The rules are read from ARCHITECTURE.md, so the document and the code cannot drift apart. Inside cdrl/
no import runs in a circle, and guidance is pure math: nothing it imports loads a checkpoint."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def architecture() -> tuple[dict[str, set[str]], set[str], set[str]]:
    """ARCHITECTURE.md's ``layers`` block: (each layer and the layers it must not import, the core's modules, what
    the core may import besides itself)."""
    block = re.search(r"```layers\n(.*?)```", (REPO / "ARCHITECTURE.md").read_text(), re.S).group(1)
    allowed, core, core_allowed = {}, set(), set()
    for line in block.splitlines():
        name, verb, *rest = line.split()
        if name == "core":
            (core if verb == "is" else core_allowed).update(rest[1:] if verb == "may" else rest)
        else:
            allowed[name] = set(rest[1:])
    return {layer: set(allowed) - {layer} - names for layer, names in allowed.items()}, core, core_allowed


#: Each layer and the top-level modules it must not import.
FORBIDDEN, CORE, CORE_MAY_IMPORT = architecture()


def layer_files(layer: str) -> list[Path]:
    """A layer's modules: one file (cli.py) or every file of its folder."""
    single = REPO / f"{layer}.py"
    return [single] if single.is_file() else sorted((REPO / layer).rglob("*.py"))


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
                 for path in layer_files(layer)}
    assert {path: roots for path, roots in offenders.items() if roots} == {}


def cdrl_imports() -> dict[str, set[str]]:
    """Each module of cdrl/ and the modules of cdrl/ it imports: at the top, inside functions or for type checking.

    ``from package import name`` imports the submodule ``package.name`` when there is one, else the package.
    """
    modules = {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
               for path in layer_files("cdrl")}
    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{path}: relative import; cdrl/ spells every import in full"
                imported.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                                else node.module for alias in node.names)
        graph[module] = {name for name in imported if name in modules and name != module}
    return graph


def test_no_import_circle_inside_cdrl():
    try:
        graphlib.TopologicalSorter(cdrl_imports()).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_guidance_is_pure_math_and_loads_no_checkpoint():
    graph, seen, todo = cdrl_imports(), set(), ["cdrl.guidance"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    assert "cdrl.checkpoint" not in seen


def test_the_method_core_imports_no_orchestration():
    """The core (ARCHITECTURE.md) imports only itself, the configs, errors, speed options and dataset descriptions."""
    assert CORE and CORE_MAY_IMPORT  # the document still names them
    graph = cdrl_imports()
    allowed = CORE | CORE_MAY_IMPORT
    reaching = {module: sorted(name for name in graph[module]
                               if not any(name == other or name.startswith(f"{other}.") for other in allowed))
                for module in sorted(CORE)}
    assert {module: names for module, names in reaching.items() if names} == {}
