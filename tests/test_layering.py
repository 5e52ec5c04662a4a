"""Dependencies point one way: cli -> pipeline -> train -> data / evaluation / report -> config -> growth ->
ckpt -> model (errors below everything), and no module imports itself back through others. Every import
counts, a function-local one too: hiding an import inside a function does not remove the dependency.

growth sits below config (the issue's sketch had them side by side): the recipe schema validates operator
names and options against the operator registry, and growth never reads a recipe: its operators are pure
functions of a model config and tensors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.trainer_runs import REPO

PACKAGE = REPO / "bigtrain"
# a package may import its own layer and the layers below (a larger number)
LAYERS = {
    "cli": 0,
    "pipeline": 1,
    "train": 2,
    "data": 3,
    "evaluation": 3,
    "report": 3,
    "config": 4,
    "growth": 5,
    "ckpt": 6,
    "model": 7,
    "errors": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_module_imports_a_layer_above_it() -> None:
    upward = [
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if layer(m) is not None and layer(t) is not None and layer(t) < layer(m)  # type: ignore[operator]
    ]
    assert upward == []


def test_there_are_no_import_cycles() -> None:
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_every_module_imports() -> None:
    names = sorted(import_graph())
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
