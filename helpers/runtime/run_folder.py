"""The run folder (created, checked, and only ever deleted when this project made it), its JSON outputs and the environment report."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Annotated

import torch
import transformers

from helpers.runtime.distributed import is_main_process, world_size
from helpers.runtime.device import device_report
from helpers.runtime.checks import RunName, check_value, expand_path

RUN_MARKER = ".run_folder.json"  # written into every run folder this project creates: --overwrite deletes only those


def run_folder(output_root: str | Path, run_name: str) -> Path:
    """``<output_root>/<run_name>`` with ``~`` expanded, once ``run_name`` is checked to be one safe folder name."""
    check_value("run_name", run_name, Annotated[str, RunName()])
    return expand_path(output_root) / run_name


def is_run_folder(path: Path) -> bool:
    """True for a real folder (not a link) that this project created as a run folder: it holds the marker."""
    return path.is_dir() and not path.is_symlink() and (path / RUN_MARKER).is_file()


def stopped_before_training(run_dir: Path) -> bool:
    """True for a run folder of this project whose run stopped before its first checkpoint and its metrics: nothing in it is worth keeping."""
    checkpoints = run_dir / "checkpoints"
    return is_run_folder(run_dir) and not (run_dir / "metrics.json").exists() and not (checkpoints.is_dir() and any(checkpoints.iterdir()))


def prepare_run_dir(output_root: str | Path, run_name: str) -> Path:
    """Create ``<output_root>/<run_name>/`` with its ``plots/`` folder and marker; refuse a folder this project did not create."""
    run_dir = run_folder(output_root, run_name)
    # A folder holding only papermill's output (made by hand for a direct papermill run) becomes a run folder.
    if run_dir.is_symlink() or (
        run_dir.exists() and not is_run_folder(run_dir) and any(p.name != "notebook.ipynb" for p in run_dir.iterdir())
    ):
        raise FileExistsError(
            f"{run_dir} exists and is not a run folder of this project (no {RUN_MARKER}); choose another run_name or output_root"
        )
    if not is_main_process():  # the main process makes the folder (the notebook waits for it under main_process_first)
        return run_dir
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    if not (run_dir / RUN_MARKER).is_file():
        (run_dir / RUN_MARKER).write_text(json.dumps({"run_name": run_name, "created_by": "fine_tuning_vlm_for_object_detection_trl"}) + "\n")
    return run_dir


def remove_run_dir(output_root: str | Path, run_name: str) -> Path:
    """Delete ``<output_root>/<run_name>/`` for ``--overwrite``: only a run folder this project created, directly in ``output_root``."""
    run_dir = run_folder(output_root, run_name)
    if not is_run_folder(run_dir) or run_dir.resolve().parent != expand_path(output_root):
        raise FileExistsError(
            f"{run_dir} is not a run folder this project created (no {RUN_MARKER}), so --overwrite will not delete it; "
            "choose another run_name, or remove it yourself"
        )
    shutil.rmtree(run_dir)
    return run_dir


HEADLESS_ENV = "QWENVL_HEADLESS"  # set by helpers.run_notebook for the kernel it starts


def is_headless() -> bool:
    """True in a run started by ``helpers.run_notebook`` (papermill or a launcher), where no one watches HTML widgets."""
    return os.environ.get(HEADLESS_ENV) == "1"


def environment_report(device: str, dtype: torch.dtype) -> dict:
    """Versions and hardware a run depends on, for the notebook and ``params.json``."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    return versions | device_report(device, dtype) | {"processes": world_size()}


def _finite_or_none(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, data) -> Path:
    """Write strict JSON (NaN becomes null), pretty-printed (the main process only)."""
    if is_main_process():  # under a launcher every rank holds the same values: one writes them
        Path(path).write_text(json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write one strict-JSON object per line (the main process only)."""
    if not is_main_process():
        return Path(path)
    with Path(path).open("w") as f:
        for row in rows:
            f.write(json.dumps(_finite_or_none(row), allow_nan=False) + "\n")
    return Path(path)
