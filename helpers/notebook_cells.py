"""Execute tagged cells of the notebook source into a namespace, so tests and benchmarks use the inline code."""

from __future__ import annotations

from pathlib import Path

import jupytext
import torch

from helpers.run_notebook import NOTEBOOK_PATH
from helpers.training import device_defaults


def run_tagged_cells(tag: str, namespace: dict | None = None) -> dict:
    """Run every code cell tagged ``tag`` in order, in a copy of ``namespace`` (the names the cells read), and return it."""
    notebook = jupytext.read(NOTEBOOK_PATH)
    cells = [c for c in notebook.cells if c.cell_type == "code" and tag in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise LookupError(f"no code cell tagged {tag!r} in {NOTEBOOK_PATH.name}")
    namespace = {**(namespace or {}), "__name__": f"notebook_{tag}"}
    for cell in cells:
        exec(compile(cell.source, f"{NOTEBOOK_PATH.name}[{tag}]", "exec", dont_inherit=True), namespace)  # as the kernel runs it
    return namespace


def notebook_sft_config(params: dict, run_dir: str | Path, device: str, dtype: torch.dtype):
    """The notebook's own ``SFTConfig`` (its cell tagged ``sft_config``) for these parameters, run folder and device."""
    names = params | {"run_dir": Path(run_dir), "device_settings": device_defaults(device, dtype)}
    return run_tagged_cells("sft_config", names)["training_args"]
