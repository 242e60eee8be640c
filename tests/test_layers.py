"""The package's layers point one way: no module imports, directly or through others, a module
that imports it back. Function-level imports count: they hide a cycle, they do not remove it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import prefalign

PACKAGE_ROOT = Path(prefalign.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body (top level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is checked
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other, one only inside a function."""
    package = tmp_path / "prefalign"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from prefalign.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from prefalign import a\n    return a\n")
    (package / "c.py").write_text("import prefalign.a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_ROOT", package)
    assert find_cycle(import_graph()) == ["prefalign.a", "prefalign.b", "prefalign.a"]


def test_config_and_model_specs_import_without_torch():
    """A config is checked before any model loads: its schema and the built-in specs need no torch."""
    from helpers import run

    code = (
        "import sys; import prefalign.config.loader, prefalign.models.specs, prefalign.errors; "
        "print('torch' in sys.modules)"
    )
    out = run([sys.executable, "-c", code], check=True).stdout
    assert out.strip() == "False"


# A function a reader takes in at once, a module that knows one thing (pyproject's [tool.ruff] keeps lines short).
LONGEST_FUNCTION, LONGEST_MODULE = 60, 410


def test_no_function_or_module_outgrows_the_project_limits():
    too_long = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > LONGEST_MODULE:
            too_long.append(f"{module_name(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    too_long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not too_long, "split these: " + "; ".join(too_long)
