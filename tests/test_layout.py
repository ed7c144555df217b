"""The shape of the code: shared/ imports in one direction, its command-line helpers stay
light, and no module reaches into another's private names."""

import ast
from pathlib import Path

from conftest import REPO

HEAVY = {"torch", "torchvision", "timm", "numpy", "scipy", "PIL", "mmdet", "mmengine"}


def shared_imports() -> dict[str, set[str]]:
    """Each shared/ module's imports of other shared/ modules, read from the source (function
    bodies too: a lazy import is still an edge), as {module: {imported modules}}."""
    graph = {}
    for path in sorted((REPO / "shared").glob("*.py")):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "shared":
                    edges |= {alias.name for alias in node.names}
                elif node.module.startswith("shared."):
                    edges.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                edges |= {a.name.split(".")[1] for a in node.names
                          if a.name.startswith("shared.")}
        graph[path.stem] = edges - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_shared_has_no_import_cycle():
    graph = shared_imports()
    assert {"errors", "cli", "data", "engine", "results"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_errors_is_a_leaf_and_data_imports_neither_download_nor_resize():
    graph = shared_imports()
    assert graph["errors"] == set()
    assert not graph["data"] & {"download", "resize"}


def test_the_command_line_helpers_import_nothing_heavy():
    """`--help` answers before torch loads only if shared/cli.py (and what it imports)
    never imports a heavy package, not even inside a function."""
    graph = shared_imports()
    for module in ("cli", *graph["cli"]):
        tree = ast.parse((REPO / "shared" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            heavy = {n.split(".")[0] for n in names} & HEAVY
            assert not heavy, f"shared/{module}.py imports {heavy}"


def test_no_module_uses_another_modules_private_names():
    for path in [*REPO.glob("shared/*.py"), *REPO.glob("task*/*.py"), *REPO.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    ("shared", "task")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports {private}"
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and Path(REPO / "shared" / f"{node.value.id}.py").exists()):
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} uses "
                                     f"{node.value.id}.{node.attr}")
