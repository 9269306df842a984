"""The house rules of the layout, checked from the imports of every module (see README, "Layout")."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level names it must never import
FORBIDDEN = {
    "analysis": {"demos", "weights", "methods", "benchmarks", "app"},
    "methods": {"demos", "weights", "benchmarks", "app"},
    "weights": {"demos", "benchmarks", "app"},
    "demos": {"app", "benchmarks"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module a file imports (at module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_the_layers_below_it(package):
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_seed_ranges_are_defined_once():
    defined = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*.py") if ".git" not in path.parts
               for line in path.read_text().splitlines()
               if line.startswith(("TRAIN_SEEDS =", "EVAL_SEED_START =", "TUNING_SEED_START ="))]
    assert defined == ["weights/shapes/world.py"] * 3


def test_the_import_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from demos.common import read_image\n")
    assert imported_packages(module) == {"os", "demos"}
