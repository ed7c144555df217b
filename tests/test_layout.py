"""The shape of the code: shared/ imports in one direction, its command-line helpers stay
light, and no module reaches into another's private names; every link between the project's
Markdown pages resolves."""

import ast
import re
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


def test_shared_names_no_task():
    """shared/ knows no task: no task folder's name in its code, docstrings aside (each
    table is declared in its task's folder)."""
    for path in (REPO / "shared").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings):
                assert not re.search(r"\btask\d+_[a-z]", node.value), \
                    f"shared/{path.name}:{node.lineno}: {node.value[:60]!r}"


def test_a_table_declared_in_a_new_folder_joins_tables_md(tmp_path):
    from shared import results

    repository = tmp_path / "repo"
    (repository / "task9_new").mkdir(parents=True)
    (repository / "task9_new" / "table.py").write_text(
        "from shared.results import DATASET, Table\n"
        "TABLES = [Table('Table 9: a new task', rows=lambda r: r['task'] == 'task9_new',\n"
        "                order=lambda r: r['dataset'], columns=[DATASET])]\n")
    declared = results.declared_tables(repository)
    assert [t.title for t in declared] == ["Table 9: a new task"]
    every = [t.title.split(":")[0] for t in results.declared_tables()]
    assert every == ["Table 1", "Table 2", "Table 2b", "Table 3", "Table 4", "Table 5",
                     "Table 6", "Table 7"]
    runs = tmp_path / "runs" / "a"
    runs.mkdir(parents=True)
    (runs / "metrics.json").write_text('{"task": "task9_new", "dataset": "dog"}')
    tables = results.write_tables(tmp_path / "runs", declared).read_text()
    assert ("## Table 9: a new task\n\n| Dataset | Seeds |\n|---|---|\n| Stanford Dogs | 1 seed |"
            in tables)


def test_a_task_folder_copied_under_another_name_runs(tmp_path, sample):
    """A user copies task4_dcgan (with shared/) into their own work as gan/: its script
    finds its own modules and shared/ by where it lies, not by its folder's name."""
    import shutil

    from conftest import run_cli

    checkout = tmp_path / "work"
    shutil.copytree(REPO / "shared", checkout / "shared",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "task4_dcgan", checkout / "gan",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "run"
    result = run_cli("gan/train.py", "--dataset", "bird", "--data-root", str(sample[0]),
                     "--out", str(out), "--gan-size", "32", "--gan-epochs", "1",
                     "--gan-batch-size", "8", "--z-dim", "8", "--gan-width", "8",
                     "--synthetic-per-class", "1", "--model", "resnet18", "--weights", "none",
                     "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                     "--val-fraction", "0.25", "--judge", str(tmp_path / "none.pt"),
                     "--gan-only", cwd=checkout,
                     env_extra={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "metrics.json").exists() and (out / "gan" / "last.pt").exists()


def test_task_scripts_share_one_import_pattern():
    """Every task script: the standard library, the two sys.path lines, shared.cli; the
    heavy imports wait in main, so that --help answers before torch loads."""
    for script in sorted(REPO.glob("task*/train.py")) + [REPO / "task3_crop" / "detect.py"]:
        tree = ast.parse(script.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = {a.name.split(".")[0] for n in top for a in n.names} | {
            (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
        assert not modules & HEAVY, f"{script.relative_to(REPO)} imports {modules & HEAVY}"
        assert "noqa: E402" not in script.read_text()


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered (-1, -2, ...)."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def markdown_links(page: Path) -> list[str]:
    """The relative links of a page, `[text](target)`, outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:", target)]


def test_every_link_between_the_pages_resolves():
    pages = [p for p in REPO.rglob("*.md") if not ({".git", "results", ".venv"} & set(
        p.relative_to(REPO).parts))]
    assert REPO / "README.md" in pages and REPO / "docs" / "engine.md" in pages
    broken = []
    for page in pages:
        for target in markdown_links(page):
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_heading_anchors_follow_github(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Speed and memory\n## A study over several sessions, or machines\n"
                    "```\n# not a heading\n```\n## Notes\n## Notes\n")
    assert heading_anchors(page) == {"speed-and-memory", "notes", "notes-1",
                                     "a-study-over-several-sessions-or-machines"}
    page.write_text("[a](other.md#notes) `x` [b](#top) [c](https://example.org)\n```\n[d](e)\n```")
    assert markdown_links(page) == ["other.md#notes", "#top"]
