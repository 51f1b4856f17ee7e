"""The package's shape: imports between tokedit's subpackages run one way, down the layers

    io -> engines -> scoring -> editor -> analysis, training -> experiments -> api
    -> integrations -> demo, cli

(a module may import its own layer and the layers before it, never a later one), and no two
modules import each other, directly or round a cycle. Imports inside functions count: a lazy
import is still a dependency. Catches: a library module reaching up into the demo or the CLI,
an engine importing the step it runs, a cycle that only works while imports stay lazy."""

from __future__ import annotations

import ast
from pathlib import Path

import tokedit

PACKAGE = Path(tokedit.__file__).parent
LAYERS = {
    "errors": 0,
    "config": 0,
    "io": 1,
    "engines": 2,
    "scoring": 3,
    "editor": 4,
    "analysis": 5,
    "training": 5,
    "experiments": 6,
    "api": 7,
    "integrations": 8,
    "demo": 9,
    "cli": 9,
    "__main__": 10,
}
SIBLINGS_APART = {frozenset({"analysis", "training"})}  # same layer, independent


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tokedit_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tokedit":
                found.update(f"tokedit.{a.name}" for a in node.names if a.name != "__version__")
            elif node.module.startswith("tokedit."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tokedit."))
    return found


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def graph() -> dict[str, set[str]]:
    return {module_name(p): tokedit_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_subpackage_has_a_layer():
    assert {layer_of(m) for m in graph()} - {"__init__"} <= set(LAYERS)


def test_imports_run_down_the_layers():
    upward = []
    for module, imports in graph().items():
        here = layer_of(module)
        if here == "__init__":
            continue
        for target in imports:
            there = layer_of(target)
            if there == "__init__":
                continue
            if LAYERS[there] > LAYERS[here] or frozenset({here, there}) in SIBLINGS_APART:
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_no_import_cycles():
    g = graph()
    known = set(g)
    edges = {m: {t for t in ts if t in known and t != m} for m, ts in g.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t] if t in stack else [m, t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


MAX_FUNCTION_LINES = 60


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions (methods and nested ones included) longer than ``limit`` lines, from their
    ``def`` line to their last line; decorators (click's option declarations) do not count."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    rel = path.relative_to(package).as_posix()
                    found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_a_reader_can_hold():
    """Every function in tokedit/ fits in 60 lines: a long one is split into named stages.
    Catches: a function grown past the limit, whatever its layer."""
    assert not long_functions(), long_functions()


def test_the_length_check_sees_methods_and_nested_functions(tmp_path):
    (tmp_path / "m.py").write_text(
        "class C:\n    def method(self):\n"
        + "        x = 1\n" * 60
        + "def outer():\n    def inner():\n"
        + "        y = 2\n" * 60
        + "    return inner\n"
    )
    assert sorted(f.split()[1] for f in long_functions(tmp_path)) == ["inner", "method", "outer"]
