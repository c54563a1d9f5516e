"""Who may import whom (docs/architecture.md): checked on the source, so a stray import fails CI.

- workers/ runs on any worker: plain functions, never farm, Ray, SQLAlchemy or Streamlit;
- farm/store/ knows rows, never jobs: not the driver, the plan, the stages or the Ray tasks;
- dashboard/ reads through farm, never workers directly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

RULES = {
    "workers": ("farm", "ray", "sqlalchemy", "streamlit", "dashboard"),
    "farm/store": ("farm.driver", "farm.plan", "farm.jobs", "farm.stages", "farm.tasks", "farm.schedule", "farm.cluster", "ray"),
    "dashboard": ("workers",),
}


def imported(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def violations(folder: str, banned: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {module}"
            for path in sorted((REPO / folder).rglob("*.py"))
            for module in sorted(imported(path))
            if any(module == b or module.startswith(b + ".") for b in banned)]


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layering(folder: str) -> None:
    assert violations(folder, RULES[folder]) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The rule above could pass by reading nothing: a buried import must be found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from farm.driver import run_sweep\n    import ray.util\n")
    assert imported(probe) == {"farm.driver", "ray.util"}
