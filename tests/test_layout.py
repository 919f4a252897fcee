"""The import graph of ``sdk/diffunfold``: no circles, and the lower layers never import upward.

Built from the source with ``ast`` (nothing is imported), counting every import, also those
inside functions: a lazy import upward is still an arrow upward. ``from . import name`` counts
as an arrow to the submodule ``name`` where there is one, else to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[1] / "sdk"

# The layers from the bottom. A module may import its own layer and the ones below it.
CORE = {
    "diffunfold",
    "diffunfold._array",
    "diffunfold.errors",
    "diffunfold.package",
    "diffunfold.edm",
    "diffunfold.sde_samplers",
    "diffunfold.formulations",
    "diffunfold.contrast",
    "diffunfold.ensemble",
    "diffunfold.noise",
    "diffunfold.unfolding",
    "diffunfold.spaces",
    "diffunfold.hardware",
    "diffunfold.safe_io",
    "diffunfold.engine_targets",
    "diffunfold.engine_gpus",
    "diffunfold.attention_graph",
    "diffunfold.group_norm_graph",
    "diffunfold.package_schema",
    "diffunfold.fast_schedule",
    "diffunfold.baselines",  # the classical estimates: physics only; the fast schedule starts from one
}
# The scanner's signal processing (noise, coil maps, k-space preparation) needs only the physics.
CORE_PACKAGES = ("diffunfold.scanner",)
# The torch reference backend runs the training side's own network, imported only when chosen.
ALLOWED_UP = {("diffunfold.runtime.backend_torch", "diffunfold.training.model")}


def _layer(module: str) -> int:
    if module.startswith("diffunfold.physics") or module in ("diffunfold._array", "diffunfold.errors"):
        return 0
    if module in CORE or module.startswith(CORE_PACKAGES):
        return 1
    if module.startswith("diffunfold.runtime"):
        return 2
    return 3  # commands, data, training, export, mrd: above the runtime


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((SDK / "diffunfold").rglob("*.py")):
        parts = list(path.relative_to(SDK).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _targets(node: ast.ImportFrom | ast.Import, here: str, modules) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if node.level:
        base = here.split(".")[: len(here.split(".")) - node.level + 1]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    found = set()
    for alias in node.names:
        sub = f"{origin}.{alias.name}"
        found.add(sub if sub in modules else origin)
    return found & set(modules)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _targets(node, here, modules) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle_and_an_upward_arrow():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _layer("diffunfold.runtime.solver") < _layer("diffunfold.mrd.recon")
    assert _layer("diffunfold.physics.mri") < _layer("diffunfold.package") < _layer("diffunfold.runtime")


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "diffunfold.runtime.tiling" in graph["diffunfold.runtime.solver"]  # from . import tiling
    assert "diffunfold.training.model" in graph["diffunfold.runtime.backend_torch"]  # inside a function
    assert "diffunfold.runtime" not in graph["diffunfold.runtime.solver"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("lower", ["diffunfold.physics", "diffunfold.runtime", "core"])
def test_no_upward_arrows(lower):
    graph = import_graph()
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if (m.startswith(lower) or (lower == "core" and _layer(m) == 1))
        and _layer(t) > _layer(m)
        and (m, t) not in ALLOWED_UP
    )
    assert upward == []


# -- the test suite's own layout ------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``source`` names, also inside functions."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def _is_test_module(name: str) -> bool:
    top = name.split(".")[0]
    return top.startswith("test_") or top == "conftest"


def test_the_test_import_checker_sees_lazy_imports():
    source = "import numpy\nfrom helpers import tiny_model\n\ndef f():\n    from test_runtime import packages\n"
    assert imported_modules(source) == {"numpy", "helpers", "test_runtime"}
    assert [m for m in sorted(imported_modules(source)) if _is_test_module(m)] == ["test_runtime"]


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py and shared functions in helpers.py. Importing a test
    module runs it again under the importer and re-creates its fixtures there: a module-scoped
    fixture imported that way (an export of test packages) ran once per importing module."""
    modules = sorted(TESTS.glob("*.py"))
    assert TESTS / "helpers.py" in modules and len(modules) > 10
    found = sorted(
        f"{path.name} imports {name}"
        for path in modules
        for name in imported_modules(path.read_text())
        if _is_test_module(name)
    )
    assert found == []


def test_helpers_hold_no_tests_and_no_fixtures():
    tree = ast.parse((TESTS / "helpers.py").read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert functions and not [f.name for f in functions if f.name.startswith("test")]
    decorated = [f.name for f in functions for d in f.decorator_list if "fixture" in ast.dump(d)]
    assert decorated == []
