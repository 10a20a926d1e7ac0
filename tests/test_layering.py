"""Import layering: wings import only downwards, no module imports itself back through others, the config loads
without torch, and the retrieval path never loads the evaluation or training code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shared_core"

FOUNDATION = {"document", "validation", "lru", "interrupt", "terminal", "atomic_file"}
"""Modules at the package's top that everything may use: the public types, input checks, a cache, Ctrl-C, the
terminal."""

WING_RANK = {
    "foundation": 0,
    "text": 1,
    "evaluation": 2,
    "config": 2,
    "models": 3,
    "engine": 4,
    "views": 5,
    "tasks": 6,
    "retriever": 7,
    "training": 8,
    "batch": 8,
    "cli": 9,
}
"""Lower imports nothing higher; wings of one rank import nothing of each other (docs/architecture.md)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every shared_core module `path` imports, anywhere in the file (TYPE_CHECKING and function bodies too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m.startswith("shared_core.")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


def _wing(module: str) -> str:
    name = module.split(".")[1]
    return "foundation" if name in FOUNDATION else name


def test_every_wing_has_a_rank() -> None:
    wings = {_wing(m) for m in _graph() if m != "shared_core"}
    assert wings <= set(WING_RANK), f"new wing(s) {sorted(wings - set(WING_RANK))}: give each a rank"


def test_wings_import_only_downwards() -> None:
    upward = []
    for module, targets in _graph().items():
        if module == "shared_core":
            continue  # the package's own re-exports
        for target in targets:
            if target == "shared_core" or _wing(target) == _wing(module):
                continue
            if WING_RANK[_wing(target)] >= WING_RANK[_wing(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not point down: " + ", ".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = {m: {t for t in ts if t != "shared_core"} for m, ts in _graph().items() if m != "shared_core"}
    # a package's __init__ re-exporting its own modules is not a cycle with them
    graph = {
        m: {t for t in ts if not (t == m.rpartition(".")[0] or m == t.rpartition(".")[0])} for m, ts in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_layering_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "mod.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shared_core.retriever import X\n")
    assert _imports(bad, "shared_core.views.mod") == {"shared_core.retriever", "shared_core.retriever.X"}
    rel = tmp_path / "rel.py"
    rel.write_text("def f():\n    from ..tasks import explain\n")
    assert "shared_core.tasks.explain" in _imports(rel, "shared_core.views.rel")


def _loaded_after(statement: str) -> set[str]:
    """The module names loaded by a fresh interpreter after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_config_imports_without_torch() -> None:
    loaded = _loaded_after("import shared_core.config, shared_core")
    assert "torch" not in loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import shared_core.retriever",
        "import haystack_attnret",
        "import llamaindex_attnret",
    ],
)
def test_retrieval_path_does_not_import_evaluation(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert "shared_core.retriever" in loaded or "shared_core.retriever" not in statement
    assert not {m for m in loaded if m.startswith("shared_core.evaluation")}, "the core imported the evaluation code"
    assert not {m for m in loaded if m.startswith("shared_core.training")}


MAX_MODULE_LINES = 450
"""A module longer than this holds more than one concept: split it (CONTRIBUTING.md)."""


def test_no_shipped_module_is_over_the_line_limit() -> None:
    root = PACKAGE.parent
    shipped = [
        p for name in ("shared_core", "llamaindex_attnret", "haystack_attnret") for p in (root / name).rglob("*.py")
    ]
    long = {str(p.relative_to(root)): n for p in shipped if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
