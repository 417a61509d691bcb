"""The design's import rules, checked on the source: who may import whom.

The graph is built from every `import` statement of every module of the package, those inside functions
included (a lazy import is still an arrow), except imports made only for type checking. Importing
`rnnkit.a.b` also runs `rnnkit/a/__init__.py`, so a package's own imports count for its modules. A rule
fails on a path from a module to a forbidden one, and the message shows that path.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rnnkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
        edges = set()
        for target in targets:
            parts = target.split(".")
            # importing a.b.c runs a/b/__init__ and a/b/c (rnnkit/__init__, which every module shares, counts
            # only when imported by name: `from rnnkit import Recurrent`)
            first = 1 if target == "rnnkit" else 2
            edges.update(".".join(parts[:i]) for i in range(first, len(parts) + 1) if ".".join(parts[:i]) in modules)
        # a module's own package runs first
        parts = name.split(".")
        edges.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in modules)
        edges.discard(name)
        graph[name] = edges
    return graph


GRAPH = _graph()


def _path(start: str, bad) -> list[str] | None:
    """The shortest import path from `start` to a module for which `bad(name)` holds, or None."""
    seen = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node != start and bad(node):
            path = [node]
            while seen[path[-1]] is not None:
                path.append(seen[path[-1]])
            return path[::-1]
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in seen:
                seen[nxt] = node
                queue.append(nxt)
    return None


def _under(*prefixes: str):
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(*prefixes: str) -> list[str]:
    return sorted(m for m in GRAPH if _under(*prefixes)(m))


TRAINING = _under("rnnkit.train", "rnnkit.tasks.training", "rnnkit.cli")
CORE = ("rnnkit.cells", "rnnkit.layers", "rnnkit.kernels", "rnnkit.attention", "rnnkit.crf")


def test_the_graph_sees_the_package():
    assert {"rnnkit.cells", "rnnkit.layers", "rnnkit.train", "rnnkit.tasks.runner", "rnnkit.serve.app",
            "rnnkit.export", "rnnkit.kernels.native"} <= set(GRAPH)
    assert "rnnkit.train" in GRAPH["rnnkit.tasks.training"]  # a known arrow is found
    assert _path("rnnkit.tasks.training", TRAINING) == ["rnnkit.tasks.training", "rnnkit.train"]


@pytest.mark.parametrize("module", [*_modules("rnnkit.serve"), "rnnkit.export", "rnnkit.diagnostics",
                                    *[m for m in _modules("rnnkit.tasks") if m != "rnnkit.tasks.training"]])
def test_using_a_run_never_reaches_training(module):
    path = _path(module, TRAINING)
    assert path is None, " -> ".join(path)


@pytest.mark.parametrize("module", _modules(*CORE))
def test_the_core_reaches_only_config_and_itself(module):
    allowed = _under(*CORE, "rnnkit.config")
    path = _path(module, lambda name: name != "rnnkit" and not allowed(name))
    assert path is None, " -> ".join(path)


@pytest.mark.parametrize("module", _modules("rnnkit.models"))
def test_models_reach_neither_data_nor_training(module):
    path = _path(module, _under("rnnkit.data", "rnnkit.train", "rnnkit.tasks", "rnnkit.cli", "rnnkit.serve"))
    assert path is None, " -> ".join(path)


@pytest.mark.parametrize("module", _modules("rnnkit.data"))
def test_data_reaches_only_config_and_io(module):
    path = _path(module, lambda name: name != "rnnkit" and not _under("rnnkit.data", "rnnkit.config",
                                                                      "rnnkit.io")(name))
    assert path is None, " -> ".join(path)


def test_matplotlib_only_in_viz():
    users = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "matplotlib" for n in names):
                users.append(_module_name(path))
    assert set(users) == {"rnnkit.viz"}, users
