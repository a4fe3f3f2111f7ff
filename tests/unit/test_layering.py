"""Who may import whom (docs/architecture.md): strata imports no service; services import only strata."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("coordinator", "worker", "dashboard_api")


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of `package` imports (module path -> names)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize("package", ["strata", *SERVICES])
def test_no_service_imports_another(package: str) -> None:
    allowed = {package}
    bad = {
        module: sorted((names & set(SERVICES)) - allowed)
        for module, names in imported_packages(package).items()
        if (names & set(SERVICES)) - allowed
    }
    assert not bad, f"{package} imports another service: {bad}"
