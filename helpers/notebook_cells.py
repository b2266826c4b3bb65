"""Execute tagged cells of the notebook source into a namespace, so tests and benchmarks use the inline code."""

from __future__ import annotations

import jupytext

from helpers.run_notebook import NOTEBOOK_PATH


def run_tagged_cells(tag: str) -> dict:
    """Run every code cell tagged ``tag`` in order and return the resulting namespace."""
    notebook = jupytext.read(NOTEBOOK_PATH)
    cells = [c for c in notebook.cells if c.cell_type == "code" and tag in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise LookupError(f"no code cell tagged {tag!r} in {NOTEBOOK_PATH.name}")
    namespace: dict = {"__name__": f"notebook_{tag}"}
    for cell in cells:
        exec(compile(cell.source, f"{NOTEBOOK_PATH.name}[{tag}]", "exec", dont_inherit=True), namespace)  # as the kernel runs it
    return namespace
