"""The worker's modules import one another without a circle, function-level imports included."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"


def _imports(path: Path) -> set[str]:
    """The worker modules that `path` imports anywhere in its text (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("worker.") and (WORKER / f"{name[7:]}.py").is_file()}


def _graph() -> dict[str, set[str]]:
    return {f"worker.{p.stem}": _imports(p) for p in sorted(WORKER.glob("*.py")) if p.stem != "__init__"}


def test_the_worker_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert graph["worker.runner"] >= {"worker.trainer", "worker.local_data", "worker.ranks"}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"the worker's modules import each other in a circle: {exc.args[1]}") from None
    assert set(order) == set(graph)


def test_the_check_sees_a_circle_hidden_in_a_function(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from worker.runner import run\n")
    (tmp_path / "b.py").write_text("def f():\n    from worker import trainer, local_data\n")
    assert _imports(tmp_path / "a.py") == {"worker.runner"}
    assert _imports(tmp_path / "b.py") == {"worker.trainer", "worker.local_data"}
