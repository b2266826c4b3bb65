"""Run the notebook headlessly with papermill into ``<output_root>/<run_name>/notebook.ipynb``, or as a script under a launcher.

Usage: ``python -m helpers.run_notebook --preset params/offline_demo.yaml -p max_steps 20``.
With ``--launch "accelerate launch --config_file configs/ddp.yaml --num_processes 8"`` (or ``"torchrun
--nproc_per_node 8"``) the same notebook, its parameters injected as papermill would inject them, is
written as a plain script, ``<run folder>/notebook_script.py``, and run by that launcher on every process.
It is the same as ``jupytext --to ipynb --output - NOTEBOOK | papermill - OUT -f PRESET -p ...``
(``-p``, ``-r``, ``-y`` and ``-f``/``--parameters_file`` read values exactly as papermill does), plus:
every parameter is checked against its declared type and values before a kernel starts; the run folder
is made first, and ``--overwrite`` deletes only a run folder this project created; the executed
notebook is written to a temporary file and renamed, so ``notebook.ipynb`` is always whole.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import papermill
import papermill.parameterize
import yaml
from papermill.iorw import NoDatesSafeLoader

from helpers.evaluate.metrics import format_comparison
from helpers.data.sources import check_splits, source_location
from helpers.parameters import check_notebook_parameters
from helpers.runtime.checks import expand_path, split_annotation, type_name, unknown_names_message
from helpers.runtime.run_folder import HEADLESS_ENV, prepare_run_dir, remove_run_dir, run_folder, stopped_before_training

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_PATH = REPO_ROOT / "fine_tuning_vlm_for_object_detection_trl.py"
PATH_PARAMETERS = ("output_root", "offline_model_dir")  # folders named relative to where the runner is started
TOOL_CACHE = ".tool_cache"  # in output_root: matplotlib's and IPython's caches for headless runs
SCRIPT_NAME = "notebook_script.py"  # what a launched run executes, kept in its run folder


class UniqueKeyLoader(NoDatesSafeLoader):
    """Papermill's YAML loader, refusing a mapping that names a key twice (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_parameter_yaml(text: str, origin: str) -> dict:
    """A YAML mapping of parameters (empty text: none); anything else is an error naming ``origin``."""
    try:
        values = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise SystemExit(f"{origin}: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SystemExit(f"{origin}: expected a mapping of parameter names to values, got a {type(values).__name__}")
    return values


def run_tagged_cells(notebook, tag: str, namespace: dict | None = None) -> dict:
    """Run every code cell tagged ``tag`` in order, in a copy of ``namespace`` (the names the cells read), and return it."""
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and tag in cell.get("metadata", {}).get("tags", [])]
    if not cells:
        raise LookupError(f"no code cell tagged {tag!r} in {NOTEBOOK_PATH.name}")
    namespace = {**(namespace or {}), "__name__": f"notebook_{tag}"}
    for cell in cells:
        # dont_inherit: this module's `from __future__ import annotations` would turn the declarations into strings
        exec(compile(cell.source, f"{NOTEBOOK_PATH.name}[{tag}]", "exec", dont_inherit=True), namespace)  # as the kernel runs it
    return namespace


def notebook_declarations(notebook) -> tuple[dict, dict]:
    """The defaults and the declared types of the notebook's ``parameters``-tagged cell, by running that cell alone."""
    cells = [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one parameters-tagged cell, found {len(cells)}")
    namespace = run_tagged_cells(notebook, "parameters")
    annotations = namespace.get("__annotations__", {})
    return {name: namespace[name] for name in annotations}, annotations


def typed_value(text: str):
    """A ``-p`` value typed as papermill types it: True, False, None, an int, a float, else the string itself."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for number_type in (int, float):
        try:
            return number_type(text)
        except ValueError:
            pass
    return text


def resolve_parameters(defaults: dict, preset: dict, overrides: dict) -> dict:
    """Defaults, then the preset, then the command line's overrides; unknown names are an error."""
    for origin, values in (("preset", preset), ("command line", overrides)):
        unknown = set(values) - set(defaults)
        if unknown:
            raise SystemExit(unknown_names_message(unknown, list(defaults), origin))
    return defaults | preset | overrides


PARAMETER_LINE = re.compile(r"^(?P<name>\w+): .*?  # (?P<comment>.*)$")  # name: Annotated[type, rule] = default  # comment


def parameter_reference(notebook) -> str:
    """The parameter reference in Markdown, generated from the parameters cell: name, type, default, allowed values, meaning."""
    defaults, annotations = notebook_declarations(notebook)
    (cell,) = [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    comments = {m["name"]: m["comment"] for m in map(PARAMETER_LINE.match, cell.source.splitlines()) if m}
    lines = [
        "# Parameters",
        "",
        "Every knob of the notebook, generated from its parameters cell by",
        "`python -m helpers.run_notebook --parameter-reference docs/parameters.md` (a test checks they agree).",
        "Override them with `-p name value`, `-y 'name: value'` or a preset (`--preset params/<name>.yaml`).",
        "",
        "| parameter | type | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, annotation in annotations.items():
        base, rules = split_annotation(annotation)
        allowed = "; ".join(rule.describe() for rule in rules) or "any"
        cells = [f"`{name}`", type_name(base), f"`{defaults[name]!r}`", allowed, comments.get(name, "")]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface: papermill's parameter options, plus the run folder's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", "-f", "--parameters_file", dest="presets", type=Path, action="append", default=[],
                        help="YAML parameter file (params/*.yaml); several are applied in order")
    parser.add_argument("-y", "--parameters_yaml", action="append", default=[], help="YAML mapping of parameters")
    parser.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override, typed as papermill does: True/False/None, an int, a float, else a string")
    parser.add_argument("-r", "--parameters_raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override kept as a string")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first (only one this project created)")
    parser.add_argument("--launch", help='run the notebook as a script under this launcher, e.g. "torchrun --nproc_per_node 2"')
    parser.add_argument("--parameter-reference", type=Path, metavar="PATH",
                        help="write the parameter reference (docs/parameters.md) from the parameters cell, and run nothing")
    return parser.parse_args(argv)


def command_line_parameters(args: argparse.Namespace, known: list[str] | None = None) -> tuple[dict, dict]:
    """The presets' values, and the overrides from -y, -p and -r (applied in papermill's order); with ``known``, a name
    outside it is an error naming the file or option that holds it."""

    def read(text: str, origin: str) -> dict:
        values = read_parameter_yaml(text, origin)
        if known is not None and set(values) - set(known):
            raise SystemExit(unknown_names_message(set(values) - set(known), known, origin))
        return values

    preset: dict = {}
    for path in args.presets:
        preset |= read(path.read_text(), str(path))
    overrides: dict = {}
    for index, text in enumerate(args.parameters_yaml):
        overrides |= read(text, f"-y #{index + 1}")
    overrides |= {name: typed_value(value) for name, value in args.parameters}
    overrides |= {name: value for name, value in args.parameters_raw}
    return preset, overrides


def keep_whole_notebook(partial: Path, final: Path) -> None:
    """Rename papermill's output to its final name when it is whole JSON; otherwise leave it and say so."""
    if not partial.is_file():
        return
    try:
        json.loads(partial.read_text())
    except (OSError, ValueError):
        print(f"the executed notebook could not be written whole (disk full?); kept the partial file {partial}", file=sys.stderr)
        return
    os.replace(partial, final)


def checked_parameters(args: argparse.Namespace, notebook) -> tuple[dict, dict]:
    """Every parameter checked (defaults, presets, overrides), and the ones to inject, with folders made absolute."""
    defaults, annotations = notebook_declarations(notebook)
    preset, overrides = command_line_parameters(args, known=list(defaults))
    try:
        parameters = check_notebook_parameters(resolve_parameters(defaults, preset, overrides), annotations)
        # A wrong path or split name stops here, before a kernel starts or a run folder is made.
        check_splits(parameters["dataset_source"], {ours: parameters[f"{ours}_split"] for ours in ("train", "eval", "test")})
    except (TypeError, ValueError) as error:  # DataError is a ValueError
        raise SystemExit(str(error)) from error
    given = {name: parameters[name] for name in preset | overrides}  # as checked: YAML's "1e-3" text is the number
    # Paths are the user's, read from where the runner was started; the kernel starts in the repository root.
    given |= {name: str(expand_path(parameters[name])) for name in PATH_PARAMETERS}
    if isinstance(source_location(parameters["dataset_source"]), Path):
        given["dataset_source"] = str(source_location(parameters["dataset_source"]))
    return parameters, given


def make_run_folder(parameters: dict, overwrite: bool) -> Path:
    """The run folder, new; or kept to resume in; or replaced (with --overwrite, or when its run stopped before training)."""
    output_root, run_name = parameters["output_root"], parameters["run_name"]
    run_dir = run_folder(output_root, run_name)
    try:
        if run_dir.exists() and parameters["resume_from_checkpoint"] not in (False, "", None):
            print(f"resuming in the existing run folder {run_dir}")  # its checkpoints are what we resume from
        elif stopped_before_training(run_dir):
            print(f"replacing {run_dir}: its run stopped before training (no checkpoint, no metrics)")
            remove_run_dir(output_root, run_name)
        elif run_dir.exists() or run_dir.is_symlink():
            if not overwrite:
                raise SystemExit(f"run folder {run_dir} exists; choose another run_name, pass --overwrite, or resume")
            remove_run_dir(output_root, run_name)
        return prepare_run_dir(output_root, run_name)
    except FileExistsError as error:
        raise SystemExit(str(error)) from error


def tool_caches(output_root: str) -> None:
    """Keep the kernel's tool caches (matplotlib's font list, IPython's profile) beside the offline checkpoints, unless the user chose."""
    tool_cache = expand_path(output_root) / TOOL_CACHE
    for variable, folder in (("MPLCONFIGDIR", "matplotlib"), ("IPYTHONDIR", "ipython")):
        os.environ.setdefault(variable, str(tool_cache / folder))
        Path(os.environ[variable]).mkdir(parents=True, exist_ok=True)  # IPython warns of a profile folder whose parent does not exist


def execute_notebook(notebook, given: dict, run_dir: Path) -> None:
    """Run the notebook through papermill into ``run_dir/notebook.ipynb``, its cells' output in this log."""
    # papermill logs the cells' printed output at INFO; show it so a headless run reads like the notebook.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    partial = run_dir / ".notebook.partial.ipynb"  # papermill saves as it goes; the final name only ever holds a whole file
    try:
        papermill.execute_notebook(
            notebook, str(partial), parameters=given, kernel_name="python3", cwd=str(REPO_ROOT), log_output=True, progress_bar=False,
        )
    finally:
        keep_whole_notebook(partial, run_dir / "notebook.ipynb")


def main(argv: list[str] | None = None) -> Path:
    """Check the parameters, make the run folder, execute the notebook and return the run folder."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    notebook = jupytext.read(NOTEBOOK_PATH)
    if args.parameter_reference:
        args.parameter_reference.write_text(parameter_reference(notebook))
        print(f"wrote {args.parameter_reference}")
        return args.parameter_reference
    parameters, given = checked_parameters(args, notebook)
    run_dir = make_run_folder(parameters, args.overwrite)
    tool_caches(parameters["output_root"])
    headless_environment()  # the kernel or the launched processes inherit it
    if args.launch:
        launch_script(notebook, given, run_dir, args.launch)
    else:
        execute_notebook(notebook, given, run_dir)
    return report_run(run_dir)


def headless_environment() -> None:
    """Mark the run headless: the trainer prints console lines instead of an HTML table, and hub progress bars stay off."""
    os.environ[HEADLESS_ENV] = "1"
    # tqdm.auto warns in a kernel without ipywidgets when the parameters cell's imports load it, before the set-up
    # cell's quiet_known_warnings(); a headless run has no widgets to show, so its kernel starts with the filter.
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))
    # Loading and saving bars ("Loading weights", "Writing model shards") repeat in a log with every checkpoint.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def report_run(run_dir: Path) -> Path:
    """Print the baseline/fine-tuned comparison of a finished run and return its folder."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(format_comparison(metrics["baseline"], metrics["finetuned"]))
    print(f"run folder: {run_dir}")
    return run_dir


def notebook_script(notebook, parameters: dict) -> str:
    """The notebook as a percent-format script with ``parameters`` injected after its parameters cell, as papermill does."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:  # papermill reads every cell's tags and the notebook's papermill record, as its loader sets them
        cell.metadata.setdefault("tags", [])
    notebook.metadata.setdefault("papermill", {})
    injected = papermill.parameterize.parameterize_notebook(notebook, parameters, kernel_name="python3", language="python")
    return jupytext.writes(injected, fmt="py:percent")


def launcher_executable(words: list[str]) -> str:
    """The launcher's program: found on PATH, else beside this Python (a virtual environment not activated), else an error saying how."""
    if not words:
        raise SystemExit('--launch is empty; give a launcher such as "torchrun --nproc_per_node 2"')
    found = shutil.which(words[0])
    beside = Path(sys.executable).parent / words[0]
    if found is None and "/" not in words[0] and beside.is_file() and os.access(beside, os.X_OK):
        found = str(beside)
    if found is None:
        raise SystemExit(
            f"--launch: {words[0]!r} is neither on PATH nor beside {sys.executable}; install it in this environment "
            f"({Path(sys.executable).parent / 'pip'} install accelerate, which brings torchrun too) or activate the environment that has it"
        )
    return found


def launch_script(notebook, parameters: dict, run_dir: Path, launcher: str) -> None:
    """Write the parameterised script into the run folder and run it under ``launcher`` from the repository root."""
    script = run_dir / SCRIPT_NAME
    partial = run_dir / f".{SCRIPT_NAME}.partial"
    partial.write_text(notebook_script(notebook, parameters))
    os.replace(partial, script)
    command = [launcher_executable(shlex.split(launcher)), *shlex.split(launcher)[1:], str(script)]
    # The script imports helpers from the repository root and draws without a display.
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])), "MPLBACKEND": "Agg"}
    print("launching:", shlex.join(command))
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the launched run failed (exit code {completed.returncode}); its output is above, its script is {script}")


if __name__ == "__main__":
    main()
