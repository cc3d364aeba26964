"""The package's import graph: layers only point down, and no module imports itself back through others.

Read from the source with ``ast`` (every import, also those inside functions), so the test sees the same
arrows a drawing of the package would show.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "featcache"

#: Bottom to top; a module may import from its own layer and the layers below it, never from above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("featcache", "errors", "registry", "config", "console", "runtime", "provenance", "views", "plotting", "operations", "records")),
    ("data", ("datasets", "encoders", "store")),
    ("models", ("metrics", "quantize", "aggregators", "decoders", "ocl", "interop", "analysis", "extraction")),
    ("training", ("training",)),
    ("stages", ("stages",)),
    ("sweeps", ("sweeps",)),
    ("pipelines", ("pipelines",)),
    ("tools", ("bench",)),
    ("cli", ("cli",)),
]


def module_names() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> featcache modules it imports (``from a.b import c`` counts as a.b.c when that is a module)."""
    modules = module_names()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                candidates = [f"{source}.{alias.name}" for alias in node.names] or [source]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                if candidate.split(".")[0] == "featcache" and (target := resolve(candidate)) and target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


def layer_of(module: str) -> int:
    top = "featcache" if module == "featcache" else module.split(".")[1]
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"module {module} belongs to no layer: add its package to LAYERS in {__file__}")


def test_every_import_points_down_or_sideways() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same arrows between top-level packages (featcache.training, featcache.stages, ...)."""
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
    return packages


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_circle(level: str) -> None:
    graph = import_graph()
    cycle = find_cycle(graph if level == "module" else package_graph(graph))
    assert cycle is None, f"{level}s import each other in a circle: {' -> '.join(cycle or [])}"


def test_the_graph_sees_real_arrows() -> None:
    """The checker itself: it finds an arrow we know exists, and a planted upward one."""
    graph = import_graph()
    assert "featcache.training.loop" in graph["featcache.training.vq"]
    planted = {**graph, "featcache.store.reader": graph["featcache.store.reader"] | {"featcache.cli"}}
    assert any(layer_of(t) > layer_of(m) for m, ts in planted.items() for t in ts)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_cli_imports_no_torch() -> None:
    """`featcache --help` stays quick: building the command line imports neither torch nor the models."""
    code = "import sys, featcache.cli as c; c.build_app() if hasattr(c, 'build_app') else None; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
