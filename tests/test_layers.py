"""The package's import graph: layers point downwards, stages do not borrow from each other, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lstm_adv"
# Stage modules in pipeline order; a stage may import an earlier one only where listed in ALLOWED.
STAGES = (
    "synth",
    "query",
    "preprocess",
    "tune_model",
    "train",
    "tune_attack",
    "attack",
    "analysis",
    "reports",
    "defend",
    "robustness",
    "pipeline",
)
ALLOWED = {
    ("tune_model", "train"): "a tuning trial trains a model",
    ("defend", "train"): "adversarial fine-tuning trains and assesses a model",
    ("preprocess", "query"): "the query run's reader lives beside its writer",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _every_node(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree``, type-only imports (``if TYPE_CHECKING:``) included: a circle through them is a
    static one, which type checkers and readers follow too."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path) -> set[str]:
    """Every ``lstm_adv`` module a file imports (top level, inside functions, type-only). ``from pkg import
    module`` names the module; the package itself only when a name that is not a module comes from it."""
    found: set[str] = set()
    for node in _every_node(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lstm_adv"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(submodules)
            if not submodules <= set(_ALL_MODULES):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lstm_adv"))
    return found


_ALL_MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}
MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_stage_imports_another_stage_except_to_train() -> None:
    """A stage module reads its parents' runs through lstm_adv.results, never through another stage's module."""
    borrowed = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        for target in targets
        if (a := _stage(module)) and (b := _stage(target)) and a != b and a != "pipeline" and (a, b) not in ALLOWED
    )
    assert borrowed == []


@pytest.mark.parametrize("layer", ["lstm_adv.domain", "lstm_adv.results", "lstm_adv.attacks", "lstm_adv.models"])
def test_lower_layers_never_import_stages_or_the_cli(layer: str) -> None:
    """domain, results, attacks and models sit below every stage and the CLI."""
    upward = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        if module.startswith(layer)
        for target in targets
        if _stage(target) is not None or target.startswith("lstm_adv.cli")
    )
    assert upward == []


def test_domain_values_never_import_the_persistence_edge() -> None:
    """Domain modules know nothing of cattrs, the run store or files."""
    offenders = sorted(
        m
        for m, path in MODULES.items()
        if m.startswith("lstm_adv.domain")
        and ("cattrs" in path.read_text(encoding="utf-8") or any(t.startswith("lstm_adv.results") for t in GRAPH[m]))
    )
    assert offenders == []


def test_there_is_no_import_circle() -> None:
    """Following imports (also those inside functions) never leads back to where it started."""
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                circles.append([*trail[trail.index(target) :], target] if target in trail else [node, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    # a subpackage's __init__ re-exporting its own submodules is not a circle of the design; the package root is
    # no such exception (every module lies inside it, so exempting it would hide every circle through it)
    real = [
        c for c in circles if "lstm_adv" in c or not all(c[0].startswith(step) or step.startswith(c[0]) for step in c)
    ]
    assert real == []
