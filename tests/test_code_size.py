"""The house's sizes: a function fits on a screen (at most 60 lines, decorators and docstring
included) and a module holds one idea (at most 500 lines), in the SDK and the benchmarks.

Read with ``ast`` (nothing is imported). A new capability that would push a module past the
limit belongs in a module of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500


def _sources() -> list[Path]:
    return sorted(p for d in ("sdk/diffunfold", "bench") for p in (ROOT / d).rglob("*.py"))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function or method in ``source`` longer than ``limit``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_the_checker_counts_a_long_function_and_passes_a_short_one():
    body = "".join(f"    x{i} = {i}\n" for i in range(61))
    assert long_functions("def f():\n" + body) == [("f", 62)]
    assert long_functions("class C:\n    @property\n    def g(self):\n        return 1\n") == []


def test_the_sources_are_found():
    names = {p.name for p in _sources()}
    assert {"solver.py", "quality.py", "images.py"} <= names


def test_every_function_fits_on_a_screen():
    over = [f"{p.relative_to(ROOT)}: {f} ({n} lines)" for p in _sources() for f, n in long_functions(p.read_text())]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines; split them:\n" + "\n".join(over)


def test_every_module_holds_one_idea():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in _sources()}
    over = [f"{p} ({n} lines)" for p, n in sizes.items() if n > MAX_MODULE_LINES]
    assert not over, f"modules over {MAX_MODULE_LINES} lines; give the new part its own module:\n" + "\n".join(over)
