"""The code's shape: helpers grouped by pipeline stage with imports pointing one way, a notebook reading a few entry points, a short README."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The stages in pipeline order (docs/layout.md): a module may import its own stage and earlier ones, never a later one.
STAGES = ("runtime", "families", "data", "offline", "evaluate", "train", "detect", "parameters", "run_notebook", "app")
MAX_NOTEBOOK_MODULES = 10
MAX_README_BYTES = 12_500


def stage_of(module: str) -> str:
    """The stage of a ``helpers`` module: its subpackage, or the top-level module's name."""
    return module.split(".")[1]


def helper_imports(path: Path) -> set[str]:
    """The ``helpers`` modules a Python file imports (at any depth of the file)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("helpers."))
    return found


HELPER_FILES = sorted(p for p in (REPO_ROOT / "helpers").rglob("*.py"))


def test_every_helper_module_belongs_to_a_stage():
    stages = {stage_of(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)) for p in HELPER_FILES if p.name != "__init__.py" or p.parent.name != "helpers"}
    assert stages <= set(STAGES), sorted(stages - set(STAGES))


@pytest.mark.parametrize("path", HELPER_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_imports_never_point_to_a_later_stage(path):
    if path == REPO_ROOT / "helpers" / "__init__.py":
        return
    own = STAGES.index(stage_of(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)))
    later = sorted(module for module in helper_imports(path) if STAGES.index(stage_of(module)) > own)
    assert not later, f"{path.relative_to(REPO_ROOT)} ({STAGES[own]}) imports a later stage: {later}"


def test_the_notebook_reads_a_few_entry_points():
    modules = helper_imports(REPO_ROOT / "fine_tuning_vlm_for_object_detection_trl.py")
    assert len(modules) <= MAX_NOTEBOOK_MODULES, sorted(modules)
    assert all(module.count(".") == 1 for module in modules), "the notebook imports packages' entry points, not their inner modules"


@pytest.mark.parametrize("package", ["runtime", "families", "data", "evaluate", "train"])
def test_entry_points_name_only_what_exists(package):
    import importlib

    module = importlib.import_module(f"helpers.{package}")
    names = dir(module)
    assert names, f"helpers.{package} exports nothing"
    for name in names:  # each exported name is its module's own definition, not a copy
        value = getattr(module, name)
        defined_in = {sub: getattr(importlib.import_module(sub), name, None) for sub in list(sys.modules) if sub.startswith(f"helpers.{package}.")}
        assert any(found is value for found in defined_in.values()), f"helpers.{package}.{name}"
    with pytest.raises(AttributeError, match=f"module 'helpers.{package}' has no attribute 'nonexistent'; it exports"):
        getattr(module, "nonexistent")


def test_the_readme_stays_short():
    size = len((REPO_ROOT / "README.md").read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; depth goes to docs/"


def test_notebook_calls_name_their_arguments_beyond_three():
    source = (REPO_ROOT / "fine_tuning_vlm_for_object_detection_trl.py").read_text()
    long_calls = [ast.get_source_segment(source, node)[:80] for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Call) and len(node.args) > 3]
    assert not long_calls, "pass these by keyword: " + "; ".join(long_calls)


def test_a_script_outside_the_checkout_imports_the_kit(tmp_path):
    # make installs the checkout in editable mode (pyproject.toml), so no sys.path edits are needed anywhere.
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    script = "import helpers.families, helpers.data; print(helpers.families.get_family('qwen2_vl').name)"
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "Qwen2-VL", out.stderr[-2000:]
