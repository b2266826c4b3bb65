"""Execute tagged cells of the notebook source into a namespace, so tests use the inline code."""

from __future__ import annotations

from pathlib import Path

import jupytext

NOTEBOOK_PATH = Path(__file__).resolve().parent.parent / "fine_tuning_vlm_for_object_detection_trl.py"


def run_tagged_cells(tag: str) -> dict:
    """Run every code cell tagged ``tag`` in order and return the resulting namespace."""
    notebook = jupytext.read(NOTEBOOK_PATH)
    cells = [c for c in notebook.cells if c.cell_type == "code" and tag in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise LookupError(f"no code cell tagged {tag!r} in {NOTEBOOK_PATH.name}")
    namespace: dict = {"__name__": f"notebook_{tag}"}
    for cell in cells:
        exec(compile(cell.source, f"{NOTEBOOK_PATH.name}[{tag}]", "exec"), namespace)
    return namespace
