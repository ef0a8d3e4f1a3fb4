"""Layering that import-linter cannot see: ``drivers/`` installs as ``qkdd.drivers``."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "qkdd"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_core_never_imports_a_concrete_driver() -> None:
    offenders = {
        str(path.relative_to(CORE.parent)): sorted(
            m
            for m in _imported_modules(path)
            if m == "qkdd.drivers" or m.startswith("qkdd.drivers.")
        )
        for path in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_an_offending_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from qkdd.drivers import keysight\nimport qkdd.drivers.thorlabs\n")
    assert {"qkdd.drivers.keysight", "qkdd.drivers.thorlabs"} <= _imported_modules(probe)
