"""The dependency directions of DEVELOPERS.md, read from every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mtlbench"


def imports_of(path: Path) -> set[str]:
    """The mtlbench modules ``path`` imports (at any depth of the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtlbench"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mtlbench"))
    return found


def modules(folder: str = "") -> dict[str, set[str]]:
    root = PACKAGE / folder if folder else PACKAGE
    return {str(p.relative_to(PACKAGE)): imports_of(p) for p in sorted(root.rglob("*.py"))}


def test_stats_imports_nothing_of_ours() -> None:
    assert imports_of(PACKAGE / "stats.py") == set()


def test_gradients_and_strategies_never_import_each_other() -> None:
    engine = imports_of(PACKAGE / "gradients.py")
    assert not any(m.startswith("mtlbench.strategies") for m in engine)
    for name, found in modules("strategies").items():
        bad = {m for m in found if m.startswith(("mtlbench.gradients", "mtlbench.train",
                                                  "mtlbench.cli", "mtlbench.models",
                                                  "mtlbench.data"))}
        assert not bad, (name, bad)


def test_data_and_models_never_import_strategies() -> None:
    for folder in ("data", "models"):
        for name, found in modules(folder).items():
            assert not any(m.startswith("mtlbench.strategies") for m in found), name


def test_checks_imports_only_the_errors() -> None:
    """Strategies and models share their validators without depending on each other."""
    assert imports_of(PACKAGE / "checks.py") <= {"mtlbench.errors", "mtlbench.errors.ConfigError"}
