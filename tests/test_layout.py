"""The house rules of the layout, checked from the imports of every module (see README, "Layout")."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level names it must never import
FORBIDDEN = {
    "analysis": {"demos", "weights", "methods", "compare", "reports", "benchmarks", "app", "gradio"},
    "methods": {"demos", "weights", "compare", "reports", "benchmarks", "app", "gradio"},
    "weights": {"demos", "compare", "reports", "benchmarks", "app", "gradio"},
    "weights/families": {"demos", "compare", "reports", "benchmarks", "app", "gradio"},
    "compare": {"demos", "reports", "benchmarks", "app", "gradio"},
    "reports": {"demos", "benchmarks", "app", "gradio"},
    "demos": {"app", "benchmarks"},
}
# Model code lives in weights/families and compare/; a tab module lays results out and holds none.
MODEL_CODE = ("torch.nn", "forward_with_stages", "load_model", "predictors_for", "from_pretrained", "Predictor(")


def imported_modules(path: Path) -> set[str]:
    """Full names of the modules a file imports (at module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


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
    assert (ROOT / package).is_dir()
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_tabs_hold_no_model_code_and_stay_small():
    """demos/ lays results out: no module runs or loads a model itself, none is over ~400 lines, and none imports
    another tab module's helpers in a circle."""
    sources = {path.stem: path.read_text() for path in sorted((ROOT / "demos").glob("*.py"))}
    assert {name: [w for w in MODEL_CODE if w in text] for name, text in sources.items()
            if any(w in text for w in MODEL_CODE)} == {}
    assert {name: len(text.splitlines()) for name, text in sources.items() if len(text.splitlines()) > 400} == {}
    imports = {name: {m.split(".")[1] for m in imported_modules(ROOT / "demos" / f"{name}.py")
                      if m.startswith("demos.")} for name in sources}

    def reaches(start: str, seen: set[str]) -> set[str]:
        for nxt in imports.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reaches(nxt, seen)
        return seen

    assert [name for name in sources if name in reaches(name, set())] == []


def test_a_model_family_is_one_file_and_nothing_else_reads_class_names():
    """Loaders and predictors dispatch on a source's family; no module outside weights/families and the registry
    compares a model class name."""
    from weights.families import FAMILY_MODULES, families

    assert sorted(p.stem for p in (ROOT / "weights" / "families").glob("*.py") if p.stem != "__init__") == sorted(
        FAMILY_MODULES)
    assert set(families()) == set(FAMILY_MODULES)
    outside = [path for path in ROOT.rglob("*.py") if not {".git", "tests", "families"} & set(path.parts)
               and path.name != "registry.py"]
    assert [str(p.relative_to(ROOT)) for p in outside
            if any(f"model_class {op}" in p.read_text() for op in ("==", "in", "!="))] == []


def test_seed_ranges_are_defined_once():
    defined = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*.py") if ".git" not in path.parts
               for line in path.read_text().splitlines()
               if line.startswith(("TRAIN_SEEDS =", "EVAL_SEED_START =", "TUNING_SEED_START ="))]
    assert defined == ["weights/shapes/world.py"] * 3


def test_the_import_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from demos.common import read_image\n")
    assert imported_packages(module) == {"os", "demos"}
