"""Shared fixtures: tiny offline checkpoints (built once per test session), the notebook's defaults, and runners."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jupytext
import pytest

from helpers.families.registry import FAMILIES, Family
from helpers.offline import build_tiny_checkpoint
from helpers.run_notebook import NOTEBOOK_PATH, REPO_ROOT, notebook_declarations

BENCHMARKS = REPO_ROOT / "benchmarks"


def pytest_make_parametrize_id(config, val, argname):
    """A family record's test id is its model_type (``test_x[qwen2_vl]``)."""
    return val.model_type if isinstance(val, Family) else None


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    """Path of a tiny random checkpoint for every supported Qwen-VL family, by its record and by its model_type."""
    root = tmp_path_factory.mktemp("offline_models")
    paths = {family: str(build_tiny_checkpoint(family, root / family.model_type)) for family in FAMILIES.values()}
    return paths | {family.model_type: path for family, path in paths.items()}


@pytest.fixture(scope="session")
def default_params() -> dict:
    """The notebook's parameters at their defaults, as its parameters cell declares them."""
    return notebook_declarations(jupytext.read(NOTEBOOK_PATH))[0]


def load_benchmark_script(name: str) -> ModuleType:
    """Import a benchmark script as a module (its folder on the path, as when it runs as a script)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("learning")``: a benchmark script imported as a module."""
    return load_benchmark_script


def smoke_run_command(folder: Path, *overrides: str) -> list[str]:
    """The runner's command line for the smoke preset writing into ``folder``, with ``name=value`` overrides."""
    args = ["--preset", "params/offline_smoke.yaml", "-p", "output_root", str(folder), "-p", "offline_model_dir", str(folder / "models")]
    for name_value in overrides:
        name, value = name_value.split("=", 1)
        args += ["-y", f"{name}: {value}"]
    return [sys.executable, "-m", "helpers.run_notebook", *args]


def run_smoke_notebook(folder: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the smoke preset through papermill into ``folder``; returns the finished process."""
    return subprocess.run(smoke_run_command(folder, *overrides), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def runner_command():
    """``runner_command(folder, "name=value", ...)``: the smoke preset's command line, to start it yourself."""
    return smoke_run_command


@pytest.fixture(scope="session")
def run_notebook():
    """``run_notebook(folder, "name=value", ..., env=None)``: the smoke preset run through papermill, finished."""
    return run_smoke_notebook


# 600 SFT steps at the demo's geometry give answers in the format with boxes somewhere (after the smoke preset's
# 12 steps every answer is unreadable), then 3 GRPO steps: a finished run with a model that writes boxes.
SFT_THEN_GRPO = (
    "model_id=offline:qwen2_5_vl", "synthetic_square_images=true", "synthetic_min_side_px=64", "synthetic_max_side_px=160",
    "min_pixels=12544", "max_pixels=12544", "learning_rate=0.002", "max_steps=600", "logging_steps=100", "eval_steps=600",
    "save_steps=600", "iou_eval_images=0", "grpo_steps=3", "grpo_generations=4", "grpo_max_completion_length=64", "test_size=8",
    "run_name=grpo",
)


@pytest.fixture(scope="session")
def sft_grpo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The notebook run once for the session with ``SFT_THEN_GRPO`` (about 100 s on 2 cores): the finished process and its run folder."""
    root = tmp_path_factory.mktemp("sft_grpo")
    return run_smoke_notebook(root, *SFT_THEN_GRPO), root / "grpo"
