"""Run bookkeeping: parameter checks, the run folder, seeds, and JSON outputs."""

from __future__ import annotations

import json
import math
import platform
import types
import typing
from pathlib import Path

import torch
import transformers

from helpers.families import FAMILY_NAMES
from helpers.gpu import device_report
from helpers.offline import build_tiny_checkpoint

OFFLINE_PREFIX = "offline:"  # model_id "offline:qwen2_vl" = the tiny random checkpoint built here


def check_parameters(values: dict, annotations: dict) -> dict:
    """Check each parameter against its annotated type; return the values as a plain dict."""
    unknown = sorted(set(values) - set(annotations))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; the notebook's parameters are {sorted(annotations)}")
    for name, expected in annotations.items():
        value = values[name]
        origin = typing.get_origin(expected)
        if origin in (types.UnionType, typing.Union):
            allowed = tuple(typing.get_origin(t) or t for t in typing.get_args(expected))
        else:
            allowed = (origin or expected,)
        if float in allowed:
            allowed += (int,)  # papermill types -p 1 as int; it is a fine float
        if isinstance(value, bool) and bool not in allowed:
            allowed = ()  # bool is an int subclass: a flag given for a number is a mistake
        if not isinstance(value, allowed):
            raise TypeError(
                f"parameter {name}={value!r} is {type(value).__name__}, expected {expected}; "
                "with papermill use -p for numbers and booleans, -r for raw strings, -y/-f for lists"
            )
    return {name: values[name] for name in annotations}


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` when it is one of ``allowed``; otherwise an error naming the parameter and the choices."""
    if value not in allowed:
        raise ValueError(f"parameter {name}={value!r} must be one of {allowed}")
    return value


def resolve_model_path(model_id: str, offline_model_dir: str | Path) -> str:
    """Hub id or local path as given; ``offline:<family>`` builds (once) and returns a tiny checkpoint."""
    if not model_id.startswith(OFFLINE_PREFIX):
        return model_id
    family = model_id.removeprefix(OFFLINE_PREFIX)
    if family not in FAMILY_NAMES:
        raise ValueError(f"model_id={model_id!r}: expected offline:<family> with family one of {', '.join(FAMILY_NAMES)}")
    return str(build_tiny_checkpoint(family, Path(offline_model_dir) / family))


def prepare_run_dir(output_root: str | Path, run_name: str) -> Path:
    """Create ``<output_root>/<run_name>/`` with its ``plots/`` folder."""
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise ValueError(f"run_name={run_name!r} must be a plain folder name")
    run_dir = Path(output_root) / run_name
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    return run_dir


def environment_report(device: str, dtype: torch.dtype) -> dict:
    """Versions and hardware a run depends on, for the notebook and ``params.json``."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    return versions | device_report(device, dtype)


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
    """Write strict JSON (NaN becomes null), pretty-printed."""
    Path(path).write_text(json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write one strict-JSON object per line."""
    with Path(path).open("w") as f:
        for row in rows:
            f.write(json.dumps(_finite_or_none(row), allow_nan=False) + "\n")
    return Path(path)
