"""The package's import graph: no cycles between its modules, and the zoo stays plain data.

A cycle makes the import order decide whether a name exists yet; the zoo is read by
the Snakefile and the CLI's help, which must not pay for importing torch and timm.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tokshift"
# Command-line front ends import the whole package lazily, on purpose; they are the graph's roots.
ENTRY_POINTS = ("tokshift.cli",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_entry_point(module: str) -> bool:
    return module in ENTRY_POINTS or module.endswith(".commands")


def _statements(body: list[ast.stmt], lazy: bool, type_hints: bool = False) -> list[ast.stmt]:
    """Import statements run at import time (lazy=False) or anywhere in the module (lazy=True);
    with type_hints, also those under `if TYPE_CHECKING:`, which never run but still tie modules."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not type_hints:
            continue  # never runs
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not lazy:
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                found.extend(_statements(getattr(node, field, []) or [], lazy, type_hints))
    return found


def import_graph(lazy: bool, type_hints: bool = False) -> dict[str, set[str]]:
    """tokshift module -> the tokshift modules it imports (relative imports resolved)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, lazy, type_hints):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` imports the submodule pkg.sub when there is one.
                targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
            deps |= {t for t in targets if t in files and t != module}
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_graph_walker_sees_relative_and_submodule_imports() -> None:
    graph = import_graph(lazy=False)
    assert "tokshift.zoo.configs" in graph["tokshift.zoo"]
    assert "tokshift.zoo" in graph["tokshift.models"]
    assert "tokshift.fileio" in graph["tokshift.engine.checkpoint"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_modules() -> None:
    assert find_cycle(import_graph(lazy=False)) is None


def test_no_cycle_even_through_imports_inside_functions() -> None:
    """Lazy imports only defer a cycle; outside the command-line front ends there is none."""
    graph = {m: {d for d in deps if not _is_entry_point(d)} for m, deps in import_graph(lazy=True).items()}
    graph = {m: deps for m, deps in graph.items() if not _is_entry_point(m)}
    assert find_cycle(graph) is None


def test_no_cycle_even_through_type_hints() -> None:
    """A cycle kept only for annotations still says two modules sit beside each other
    instead of one above the other (e.g. a loader that names the model it fills)."""
    graph = {
        m: {d for d in deps if not _is_entry_point(d)}
        for m, deps in import_graph(lazy=True, type_hints=True).items()
        if not _is_entry_point(m)
    }
    assert find_cycle(graph) is None


def test_only_the_workflow_layer_imports_it() -> None:
    """The engine, the data stages and the CLI stand on their own: their defaults come from
    tokshift.settings, and the workflow layer (Snakemake glue) sits on top of them."""
    graph = import_graph(lazy=True, type_hints=True)
    offenders = {
        m: sorted(d for d in deps if d.startswith("tokshift.workflow"))
        for m, deps in graph.items()
        if not m.startswith("tokshift.workflow")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.parametrize(
    "module", ["tokshift.settings", "tokshift.zoo", "tokshift.workflow", "tokshift.fileio", "tokshift.data.sources"]
)
def test_light_modules_import_neither_torch_nor_timm(module: str) -> None:
    code = f"import sys, {module}; heavy = sorted({{'torch', 'timm'}} & set(sys.modules)); print(heavy)"
    root = str(PACKAGE.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"importing {module} pulled in {proc.stdout.strip()}"
