"""The package's layers and which may import which (every import, also those inside functions).

core <- transforms <- trainers; losses and networks never import trainers or each other; evaluation never imports
trainers; the command line and the benchmarks sit on top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_ext"
SHARED = {"errors", "_compat"}  # root modules every layer may use

ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "losses": {"losses", "core"},
    "networks": {"networks", "core"},
    "transforms": {"transforms", "core", "losses.extra_target"},
    "evaluation": {"evaluation", "core"},
    "testing": {"testing", "core"},
    "trainers": {"trainers", "core", "transforms", "losses", "networks", "evaluation"},
    "cli": {"cli", "core", "transforms", "losses", "networks", "evaluation", "trainers", "testing", "benchmarks"},
    "benchmarks": {"benchmarks", "cli", "core", "transforms", "losses", "networks", "evaluation", "trainers",
                   "testing"},
}


def _imports(path: Path) -> set[str]:
    """Every nnunet_ext module ``path`` imports, without the ``nnunet_ext.`` prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n.removeprefix("nnunet_ext.") for n in names if n.startswith("nnunet_ext.")}
    return found


def _allowed(layer: str, imported: str) -> bool:
    return imported.split(".")[0] in SHARED or any(imported == rule or imported.startswith(rule + ".")
                                                   for rule in ALLOWED[layer])


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_the_package_root_holds_at_most_three_modules():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 3, root_modules
    assert set(p.relative_to(PACKAGE).parts[0] for p in MODULES) <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_follow_the_layers(path):
    layer = path.relative_to(PACKAGE).parts[0]
    wrong = sorted(i for i in _imports(path) if not _allowed(layer, i))
    assert not wrong, f"{layer} may not import {wrong}"


def test_the_rule_catches_a_forbidden_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from nnunet_ext.trainers.registry import LOSSES\n")
    assert not _allowed("losses", next(iter(_imports(module))))
    assert not _allowed("networks", "losses.cldice") and not _allowed("transforms", "losses.cldice")
    assert _allowed("transforms", "losses.extra_target") and _allowed("trainers", "losses.cldice")
