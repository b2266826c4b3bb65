"""Run the notebook headlessly with papermill into ``<output_root>/<run_name>/notebook.ipynb``.

Usage: ``python -m helpers.run_notebook --preset params/offline_demo.yaml -p max_steps 20``.
It is the same as ``jupytext --to ipynb --output - NOTEBOOK | papermill - OUT -f PRESET -p ...``,
plus checks that every parameter name exists before a kernel starts, and a run folder made first.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import shutil
import sys
from pathlib import Path

import jupytext
import papermill
import yaml

from helpers.metrics import format_comparison

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_PATH = REPO_ROOT / "fine_tuning_vlm_for_object_detection_trl.py"


def notebook_defaults(notebook) -> dict:
    """Names and literal default values of the notebook's ``parameters``-tagged cell."""
    cells = [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one parameters-tagged cell, found {len(cells)}")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defaults[node.target.id] = ast.literal_eval(node.value)
    return defaults


def resolve_parameters(defaults: dict, preset: dict, overrides: dict) -> dict:
    """Defaults, then the preset, then ``-p`` overrides; unknown names are an error."""
    for origin, values in (("preset", preset), ("-p", overrides)):
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise SystemExit(f"{origin}: unknown parameters {unknown}; known: {sorted(defaults)}")
    return defaults | preset | overrides


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, help="papermill YAML parameter file (params/*.yaml)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override; VALUE is read as YAML")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Execute the notebook and return the run folder."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    notebook = jupytext.read(NOTEBOOK_PATH)
    preset = (yaml.safe_load(args.preset.read_text()) or {}) if args.preset else {}  # an empty file is {}
    overrides = {name: yaml.safe_load(value) for name, value in args.p}
    parameters = resolve_parameters(notebook_defaults(notebook), preset, overrides)
    run_dir = (REPO_ROOT / parameters["output_root"] / parameters["run_name"]).resolve()
    if run_dir.exists() and parameters.get("resume_from_checkpoint") not in (False, "", None):
        print(f"resuming in the existing run folder {run_dir}")  # its checkpoints are what we resume from
    elif run_dir.exists():
        if not args.overwrite:
            raise SystemExit(f"run folder {run_dir} exists; choose another run_name, pass --overwrite, or resume")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # papermill logs the cells' printed output at INFO; show it so a headless run reads like the notebook.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    papermill.execute_notebook(
        notebook,
        str(run_dir / "notebook.ipynb"),
        parameters=preset | overrides,
        kernel_name="python3",
        cwd=str(REPO_ROOT),
        log_output=True,
        progress_bar=False,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(format_comparison(metrics["baseline"], metrics["finetuned"]))
    print(f"run folder: {run_dir}")
    return run_dir


if __name__ == "__main__":
    main()
