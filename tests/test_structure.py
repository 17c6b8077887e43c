"""Structure checks over the source tree: no import cycles among kdlab modules, leaf modules stay leaves."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "kdlab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _import_time_nodes(tree: ast.Module):
    """Statements run when the module is imported: module and class bodies, branches of module-level if/try;
    not function bodies (they run later) nor ``if TYPE_CHECKING:`` blocks."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(getattr(node, field, []) or [])


def _edges(name: str, path: Path, known: set[str]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _import_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            # importing a.b.c from outside package a.b first runs a.b's __init__ (and a's): an edge too
            parts = t.split(".")
            for i in range(2, len(parts) + 1):
                pkg = ".".join(parts[:i])
                if pkg in known and pkg != name and not name.startswith(pkg + "."):
                    out.add(pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _edges(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_sees_a_cycle_and_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_relative_and_submodule_imports(tmp_path):
    graph = import_graph()
    assert "kdlab.schema" in graph["kdlab.recipe"]
    assert "kdlab.data.builtin" in graph["kdlab.data"]  # `from kdlab.data import builtin` names the module


def test_no_import_cycles_among_kdlab_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_leaf_modules_import_nothing_of_kdlab_but_errors():
    graph = import_graph()
    for leaf in ("kdlab.errors", "kdlab.schema", "kdlab.runfiles", "kdlab.seeds"):
        assert graph[leaf] <= {"kdlab.errors"}, f"{leaf} imports {sorted(graph[leaf])}"


# modules not yet annotated (none left)
PENDING: set[str] = set()


def test_function_local_kdlab_imports_say_why():
    """A function-local import of kdlab breaks a cycle or defers a heavy import; a comment on it (or above it)
    says which, unless the module's docstring says that it imports on first use (the CLI)."""
    silent = []
    for name, path in _modules().items():
        src = path.read_text()
        tree = ast.parse(src)
        if name in PENDING or "on first use" in (ast.get_docstring(tree) or ""):
            continue
        lines = src.splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                mod = (
                    node.module
                    if isinstance(node, ast.ImportFrom)
                    else node.names[0].name
                    if isinstance(node, ast.Import)
                    else None
                )
                if (
                    mod
                    and mod.startswith("kdlab")
                    and not any("#" in lines[i] for i in (node.lineno - 2, node.lineno - 1))
                ):
                    silent.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not silent, f"function-local imports without a comment saying why: {silent}"
