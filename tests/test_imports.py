"""Imports only point down (STYLE.md, habit 9): read every production module's imports with `ast`,
those inside functions included, and refuse an import up the declared layers or any circle.

    cli -> runner/workflow -> steps -> {train, registry, evaluate}
        -> {lightning_module, package, inference, metrics} -> {model, data}

A module may import its own layer or any layer below it. A new module of `pipeline/` must be placed
in LAYERS (where it sits is a design decision, so the test asks for it); `data.*` and `model.*`
are the bottom layer, and their own imports must still form no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data", "model", "pipeline")

# Top first. Modules named here but absent from the tree are allowed (another branch adds them).
LAYERS: list[tuple[str, set[str]]] = [
    ("command line", {"pipeline.cli", "pipeline.commands", "pipeline.model_commands"}),
    ("runs of the pipeline", {"pipeline.runner", "pipeline.sweep", "pipeline.sweep_space", "pipeline.sweep_table",
                              "pipeline.submit"}),
    ("steps", {"pipeline.steps", "pipeline.batch_translate"}),
    ("what steps call", {"pipeline.workflow", "pipeline.train", "pipeline.registry", "pipeline.evaluate",
                         "pipeline.lineage", "pipeline.report"}),
    ("model in use", {"pipeline.lightning_module", "pipeline.callbacks", "pipeline.train_inputs", "pipeline.package",
                      "pipeline.inference", "pipeline.metrics", "pipeline.pyfunc_model"}),
    ("pipeline services", {"pipeline", "pipeline.config", "pipeline.config_schema", "pipeline.home", "pipeline.tracking",
                           "pipeline.output", "pipeline.artifacts", "pipeline.plots", "pipeline.interrupts",
                           "pipeline.ray_connect"}),
    ("model and data", {"data", "model"}),  # and every module under them
]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{"pipeline.steps": .../pipeline/steps.py, "data.tokenizer": .../data/tokenizer/__init__.py, ...}"""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (top level, functions, classes).

    `from a.b import c` is an edge to the module a.b.c when it is one, else to a.b.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int:
    for depth, (_, members) in enumerate(LAYERS):
        if module in members or module.split(".")[0] in members - {"pipeline"}:
            return depth
    raise KeyError(module)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]}), a layer above it"
        for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) < layer_of(a)
    ]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    unplaced = []
    for module in graph:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"modules in no layer (add each to LAYERS in {Path(__file__).name}): {unplaced}"


def test_imports_only_point_down(graph):
    up = upward_imports(graph)
    assert not up, "imports up the layers:\n" + "\n".join(up)


def test_no_import_circles(graph):
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_see_what_they_are_for(tmp_path):
    """Known answers on a hand-made tree: imports inside a function, relative ones, an upward one, a circle."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "steps.py").write_text("")
    (tmp_path / "pipeline" / "metrics.py").write_text("")
    (tmp_path / "pipeline" / "evaluate.py").write_text(
        "import json\n\ndef f():\n    from pipeline.steps import train\n    from . import metrics\n"
    )
    graph = {name: deps for name, deps in import_graph(tmp_path).items() if deps}
    assert graph == {"pipeline.evaluate": {"pipeline.steps", "pipeline.metrics"}}
    assert upward_imports(graph) == [
        "pipeline.evaluate (what steps call) imports pipeline.steps (steps), a layer above it"
    ]
    assert upward_imports({"pipeline.steps": {"pipeline.evaluate"}}) == []
    assert circles({"model.layers": {"model.transformer"}, "model.transformer": {"model.layers"}}) == [
        ["model.layers", "model.transformer"]
    ]
