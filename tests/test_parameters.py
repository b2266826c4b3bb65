"""Bad parameters are refused before any work, naming the parameter, the value and what is allowed; and the runner reads values as papermill does."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import pytest
import yaml

from helpers.parameters import check_notebook_parameters
from helpers.run_notebook import NOTEBOOK_PATH, command_line_parameters, keep_whole_notebook, main, notebook_declarations, parameter_reference, parse_args

DEFAULTS, ANNOTATIONS = notebook_declarations(jupytext.read(NOTEBOOK_PATH))
PRESETS = sorted((Path(__file__).resolve().parent.parent / "params").glob("*.yaml"))

BAD = [  # (name, value, what the error says is allowed); each was accepted, or failed late, before
    ("per_device_train_batch_size", 0, ">= 1"),
    ("per_device_eval_batch_size", 0, ">= 1"),
    ("generation_batch_size", 0, ">= 1"),
    ("gradient_accumulation_steps", 0, ">= 1"),
    ("synthetic_classes", [], "not empty"),
    ("num_train_epochs", -1, "> 0"),
    ("max_steps", 0, "one of -1 or a number >= 1"),
    ("max_steps", -2, "one of -1 or a number >= 1"),
    ("max_grad_norm", -1.0, ">= 0"),
    ("n_scaling_check_images", 0, ">= 1"),
    ("train_size", -1, ">= 0"),
    ("test_size", -5, ">= 0"),
    ("learning_rate", 0.0, "> 0"),
    ("warmup_steps", -0.5, ">= 0"),
    ("lora_dropout", -0.1, ">= 0"),
    ("lora_rank", 0, ">= 1"),
    ("duplicate_iou", 1.2, "<= 1"),
    ("loop_repeats", 1, "one of 0 or a number >= 2"),
    ("max_new_tokens", 0, ">= 1"),
    ("iou_eval_images", -1, ">= 0"),
    ("save_total_limit", 0, ">= 1"),
    ("logging_steps", 0, ">= 1"),
    ("seed", -1, ">= 0"),
    ("synthetic_min_side_px", 2, ">= 8"),
    ("task", "Grounding", "one of 'detection', 'grounding'"),
    ("quantization", "4-bit", "one of 'none', '8bit', '4bit'"),
    ("attn_implementation", "flash", "one of 'sdpa'"),
    ("lr_scheduler_type", "cosine_annealing", "one of 'cosine'"),
    ("report_to", "mlflow", "one of 'none', 'wandb', 'tensorboard'"),
    ("dataset_bbox_format", "cxcywh", "one of 'xywh', 'xyxy'"),
    ("run_name", "..", "a folder name"),
    ("run_name", ".", "a folder name"),
    ("run_name", "", "a folder name"),
    ("run_name", "../escaped", "a folder name"),
    ("run_name", "/tmp/abs", "a folder name"),
    ("run_name", "~", "a folder name"),
    ("output_root", "", "not empty"),
    ("model_id", " ", "not empty"),
    ("resume_from_checkpoint", "", "not empty"),
]
WRONG_TYPE = [
    ("run_name", 7), ("run_name", None), ("learning_rate", "fast"), ("max_steps", 2.5), ("use_lora", "yes"), ("synthetic_classes", "a,b"),
]


@pytest.mark.parametrize("name,value,allowed", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_a_value_out_of_range_is_refused_with_what_is_allowed(name, value, allowed):
    with pytest.raises(ValueError, match=rf"parameter {name}={value!r} is not allowed: expected .*{allowed}".replace("(", r"\(").replace("[", r"\[")):
        check_notebook_parameters(DEFAULTS | {name: value}, ANNOTATIONS)


@pytest.mark.parametrize("name,value", WRONG_TYPE)
def test_a_value_of_the_wrong_type_is_refused(name, value):
    with pytest.raises(TypeError, match=rf"parameter {name}={value!r} is {type(value).__name__}, expected"):
        check_notebook_parameters(DEFAULTS | {name: value}, ANNOTATIONS)


@pytest.mark.parametrize("low,high", [("synthetic_min_side_px", "synthetic_max_side_px"), ("min_pixels", "max_pixels")])
def test_a_range_whose_ends_cross_is_refused(low, high):
    with pytest.raises(ValueError, match=f"parameter {low}=.* is above {high}="):
        check_notebook_parameters(DEFAULTS | {low: 5000, high: 4000}, ANNOTATIONS)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_the_defaults_and_every_preset_pass(preset):
    assert check_notebook_parameters(DEFAULTS | yaml.safe_load(preset.read_text()), ANNOTATIONS)


def test_every_rule_sits_beside_its_declaration():
    source = jupytext.read(NOTEBOOK_PATH).cells
    cell = next(c for c in source if "parameters" in c.get("metadata", {}).get("tags", []))
    declared = [line.split(":")[0] for line in cell.source.splitlines() if ": " in line and " = " in line and not line.startswith(("from", " ", "#"))]
    assert declared == list(ANNOTATIONS)  # one line per parameter: name, type and rule, default, comment


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["-p", "learning_rate", "2e-4"], {"learning_rate": 2e-4}),  # a float, as papermill reads it
        (["-p", "max_steps", "20"], {"max_steps": 20}),
        (["-p", "use_lora", "True"], {"use_lora": True}),
        (["-p", "run_name", "007"], {"run_name": 7}),  # papermill's typing: an int, which the check then refuses
        (["-r", "run_name", "007"], {"run_name": "007"}),  # -r keeps the string
        (["-y", "lora_targets: [language, vision]\nuse_lora: true"], {"lora_targets": ["language", "vision"], "use_lora": True}),
        (["--parameters_yaml", "max_steps: 3", "-p", "max_steps", "4"], {"max_steps": 4}),  # -p after -y, as papermill
    ],
)
def test_the_runner_reads_values_as_papermill_does(argv, expected):
    assert command_line_parameters(parse_args(argv))[1] == expected


@pytest.mark.parametrize(
    "text,error",
    [
        ("- max_steps: 3\n", "expected a mapping of parameter names to values, got a list"),
        ("3\n", "expected a mapping of parameter names to values, got a int"),
        ("max_steps: 3\nmax_steps: 4\n", "duplicate key 'max_steps'"),
        ("max_steps: [\n", "while parsing"),
    ],
)
def test_a_preset_must_be_a_mapping_without_duplicate_keys(tmp_path, text, error):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    with pytest.raises(SystemExit, match=error):
        command_line_parameters(parse_args(["-f", str(preset)]))


def sentinels(root: Path) -> list[Path]:
    """Files planted inside and around an output folder; every one must survive a refused run."""
    paths = [root / "repo" / "README.md", root / "repo" / "outputs" / "other-run" / "metrics.json", root / "elsewhere" / "data.txt",
             root / "repo" / "outputs" / "theirs" / "keep.txt"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    return paths


@pytest.mark.parametrize(
    "overrides",
    [
        ["-r", "run_name", ".."], ["-r", "run_name", "."], ["-r", "run_name", ""], ["-r", "run_name", "../escaped"],
        ["-r", "run_name", "{elsewhere}"], ["-p", "run_name", "7"], ["-p", "run_name", "None"], ["-r", "run_name", "theirs"],
        ["-r", "output_root", ""], ["-r", "run_name", "~"],
    ],
)
def test_no_bad_name_deletes_or_writes_anything(tmp_path, monkeypatch, overrides):
    planted = sentinels(tmp_path)
    monkeypatch.chdir(tmp_path / "repo")
    overrides = [value.format(elsewhere=tmp_path / "elsewhere") for value in overrides]
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit):
        main(["--overwrite", "-r", "output_root", str(tmp_path / "repo" / "outputs"), *overrides])
    assert all(path.read_text() == "keep" for path in planted)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing deleted, nothing written


def test_the_offline_cache_replaces_only_its_own_builds(tmp_path):
    from helpers.offline import resolve_model_path

    unrelated = tmp_path / "models" / "qwen2_vl"
    unrelated.mkdir(parents=True)
    (unrelated / "my_weights.bin").write_text("keep")
    with pytest.raises(FileExistsError, match="is not an offline checkpoint built here"):
        resolve_model_path("offline:qwen2_vl", tmp_path / "models")
    assert (unrelated / "my_weights.bin").read_text() == "keep"


@pytest.mark.parametrize("partial_text,kept", [('{"cells": []}', True), ('{"cells": [', False)])
def test_the_notebook_is_renamed_into_place_only_when_whole(tmp_path, partial_text, kept):
    partial, final = tmp_path / ".notebook.partial.ipynb", tmp_path / "notebook.ipynb"
    final.write_text('{"previous": true}')
    partial.write_text(partial_text)
    keep_whole_notebook(partial, final)
    assert json.loads(final.read_text()) == (json.loads(partial_text) if kept else {"previous": True})
    assert partial.exists() != kept



def test_the_parameter_reference_is_generated_from_the_parameters_cell():
    reference = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"
    assert reference.read_text() == parameter_reference(jupytext.read(NOTEBOOK_PATH)), (
        "docs/parameters.md differs from the parameters cell; regenerate it: python -m helpers.run_notebook --parameter-reference docs/parameters.md"
    )


def test_every_parameter_says_what_it_means():
    # The reference's "meaning" column is each declaration's trailing comment.
    table = parameter_reference(jupytext.read(NOTEBOOK_PATH)).splitlines()
    rows = [line for line in table if line.startswith("| `")]
    assert len(rows) == len(ANNOTATIONS) and all(not row.rstrip().endswith("|  |") for row in rows)


@pytest.mark.parametrize(
    "text,name,value",
    [("learning_rate: 1e-3\n", "learning_rate", 1e-3), ("weight_decay: 1E-2\n", "weight_decay", 0.01),
     ("max_steps: '20'\n", "max_steps", 20), ("warmup_steps: 5e1\n", "warmup_steps", 50.0)],
    ids=["1e-3", "1E-2", "quoted-int", "5e1"],
)
def test_numbers_written_as_yaml_1_1_text_are_read_as_numbers(tmp_path, text, name, value):
    # PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; a numeric parameter takes it as the number.
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    values = command_line_parameters(parse_args(["-f", str(preset)]), known=list(DEFAULTS))[0]
    assert isinstance(values[name], str)
    checked = check_notebook_parameters(DEFAULTS | values, ANNOTATIONS)[name]
    assert checked == value and type(checked) is type(value)


def test_text_for_a_number_that_is_no_number_is_still_refused_by_type():
    with pytest.raises(TypeError, match="parameter learning_rate='fast' is str, expected float"):
        check_notebook_parameters(DEFAULTS | {"learning_rate": "fast"}, ANNOTATIONS)


def test_an_unknown_name_in_a_preset_names_the_file_and_the_closest_parameter(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("lerning_rate: 0.1\nmax_steps: 3\n")
    with pytest.raises(SystemExit, match=rf"{preset}: unknown parameters \['lerning_rate'\] \('lerning_rate': did you mean 'learning_rate'\?\)"):
        command_line_parameters(parse_args(["-f", str(preset)]), known=list(DEFAULTS))
    with pytest.raises(SystemExit, match=r"-y #1: unknown parameters \['maxsteps'\] \('maxsteps': did you mean 'max_steps'\?\)"):
        command_line_parameters(parse_args(["-y", "maxsteps: 3"]), known=list(DEFAULTS))


def test_keeping_the_best_checkpoint_is_checked_before_any_work():
    with pytest.raises(ValueError, match="parameter keep_checkpoint='best_eval_loss' compares checkpoints at evaluations"):
        check_notebook_parameters(DEFAULTS | {"keep_checkpoint": "best_eval_loss"}, ANNOTATIONS)  # save 750, eval 500
    assert check_notebook_parameters(DEFAULTS | {"keep_checkpoint": "best_eval_loss", "save_steps": 1000}, ANNOTATIONS)
