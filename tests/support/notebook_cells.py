"""The notebook's tagged cells run from its source, so tests and benchmarks use its inline code."""

from __future__ import annotations

from pathlib import Path

import jupytext
import torch

from helpers.run_notebook import NOTEBOOK_PATH
from helpers.run_notebook import run_tagged_cells as run_cells_of
from helpers.train.config import data_loader_settings, device_defaults


def run_tagged_cells(tag: str, namespace: dict | None = None) -> dict:
    """Run the notebook's code cells tagged ``tag`` in a copy of ``namespace`` and return it."""
    return run_cells_of(jupytext.read(NOTEBOOK_PATH), tag, namespace)


def notebook_sft_config(params: dict, run_dir: str | Path, device: str, dtype: torch.dtype):
    """The notebook's own ``SFTConfig`` (its cell tagged ``sft_config``) for these parameters, run folder and device."""
    names = params | {"run_dir": Path(run_dir), "device_settings": device_defaults(device, dtype),
                      "loader_settings": data_loader_settings(params.get("dataloader_num_workers", -1), device)}
    return run_tagged_cells("sft_config", names)["training_args"]
