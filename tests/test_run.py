"""Parameter checks, run folders and strict JSON output."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from helpers.parameters import check_notebook_parameters
from helpers.runtime.run_folder import RUN_MARKER, prepare_run_dir, remove_run_dir, stopped_before_training, write_json, write_jsonl
from helpers.offline import resolve_model_path
from helpers.run_notebook import launcher_executable, typed_value

ANNOTATIONS = {"lr": float, "steps": int, "name": str, "flag": bool, "classes": list, "maybe": str | None}
GOOD = {"lr": 1e-3, "steps": 3, "name": "x", "flag": True, "classes": ["a"], "maybe": None}


@pytest.mark.parametrize(
    "change,error",
    [
        ({}, None),
        ({"lr": 1}, None),  # an int is a fine float
        ({"maybe": "text"}, None),
        ({"lr": "2e-4x"}, "parameter lr='2e-4x' is str"),
        ({"steps": 2.5}, "parameter steps=2.5 is float"),
        ({"steps": True}, "parameter steps=True is bool"),
        ({"classes": "a,b"}, "parameter classes='a,b' is str"),
        ({"flag": "yes"}, "parameter flag='yes' is str"),
    ],
)
def test_check_parameters(change, error):
    values = GOOD | change
    if error is None:
        assert check_notebook_parameters(values, ANNOTATIONS) == values
    else:
        with pytest.raises(TypeError, match=error.replace("(", r"\(")):
            check_notebook_parameters(values, ANNOTATIONS)


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match=r"unknown parameters \['lerning_rate'\]"):
        check_notebook_parameters(GOOD | {"lerning_rate": 1.0}, ANNOTATIONS)


@pytest.mark.parametrize("run_name", ["", "a/b", "..", ".", "/abs", "~", ".hidden", "a b", 7, None])
def test_bad_run_names(tmp_path, run_name):
    with pytest.raises((ValueError, TypeError), match="parameter run_name="):
        prepare_run_dir(tmp_path, run_name)


def test_a_run_folder_carries_its_marker_and_only_such_a_folder_is_removed(tmp_path):
    run_dir = prepare_run_dir(tmp_path, "mine")
    assert (run_dir / RUN_MARKER).is_file()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "sentinel").write_text("keep")
    with pytest.raises(FileExistsError, match="not a run folder of this project"):
        prepare_run_dir(tmp_path, "theirs")
    with pytest.raises(FileExistsError, match="will not delete it"):
        remove_run_dir(tmp_path, "theirs")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    with pytest.raises(FileExistsError):
        remove_run_dir(tmp_path, "link")
    assert (tmp_path / "theirs" / "sentinel").read_text() == "keep" and run_dir.is_dir()
    remove_run_dir(tmp_path, "mine")
    assert not run_dir.exists()


def test_a_folder_without_the_marker_is_not_deleted_even_with_a_params_json(tmp_path):
    unmarked = tmp_path / "old-run"
    unmarked.mkdir()
    (unmarked / "params.json").write_text(json.dumps({"parameters": {"run_name": "old-run"}, "environment": {}}))
    with pytest.raises(FileExistsError, match="will not delete it"):
        remove_run_dir(tmp_path, "old-run")  # only the marker makes a run folder
    assert (unmarked / "params.json").is_file()


def test_a_folder_holding_only_papermills_output_becomes_a_run_folder(tmp_path):
    (tmp_path / "by-hand").mkdir()
    (tmp_path / "by-hand" / "notebook.ipynb").write_text("{}")
    assert (prepare_run_dir(tmp_path, "by-hand") / RUN_MARKER).is_file()


def test_output_root_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert prepare_run_dir("~/runs", "r1") == tmp_path / "runs" / "r1"
    assert not (Path.cwd() / "~").exists()


def test_run_dir_layout(tmp_path):
    run_dir = prepare_run_dir(tmp_path, "r1")
    assert run_dir == tmp_path / "r1" and (run_dir / "plots").is_dir()


def test_resolve_model_path(tmp_path):
    assert resolve_model_path("Qwen/Qwen2-VL-2B-Instruct", tmp_path) == "Qwen/Qwen2-VL-2B-Instruct"
    assert resolve_model_path("offline:qwen3_vl", tmp_path) == str(tmp_path / "qwen3_vl")
    with pytest.raises(ValueError, match="offline:<model_type>"):
        resolve_model_path("offline:qwen9", tmp_path)


def test_json_writers_are_strict(tmp_path):
    write_json(tmp_path / "m.json", {"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    write_jsonl(tmp_path / "p.jsonl", [{"x": 1}, {"x": math.nan}])
    assert [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()] == [{"x": 1}, {"x": None}]


def test_a_launcher_beside_the_interpreter_is_found_without_the_environment_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an environment not activated: nothing of it on PATH
    assert launcher_executable(["torchrun", "--nproc_per_node", "2"]) == str(Path(sys.executable).parent / "torchrun")


def test_a_missing_launcher_says_how_to_fix_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="'no-such-launcher' is neither on PATH nor beside .*install accelerate"):
        launcher_executable(["no-such-launcher", "--nproc_per_node", "2"])


@pytest.mark.parametrize(
    "text,value",
    [("True", True), ("False", False), ("None", None), ("3", 3), ("-2", -2), ("1e-4", 1e-4), ("0.5", 0.5),
     ("offline:qwen2_vl", "offline:qwen2_vl"), ("true", "true"), ("", "")],
)
def test_p_values_are_typed_as_papermill_types_them(text, value):
    # The table papermill's command line follows: True/False/None, then int, then float, else the string.
    typed = typed_value(text)
    assert typed == value and type(typed) is type(value)


def yolo_folder(root: Path, splits: tuple[str, ...]) -> Path:
    """A YOLO folder in Roboflow's layout with one image per split."""
    from PIL import Image

    for split in splits:
        (root / split / "images").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(root / split / "images" / "a.png")
    (root / "data.yaml").write_text("names: [cat]\n")
    return root


@pytest.mark.parametrize(
    "source,splits,message",
    [("{tmp}/nope", (), "expected a folder at .*nope, found none there"),
     ("{tmp}/data", ("train", "valid", "test"), None),  # 'validation' is found as 'valid'
     ("{tmp}/data", ("train", "valid"), r"has no split 'test' for test_split; it holds \['train', 'valid'\]"),
     ("{tmp}/data", ("train", "vaild", "test"), r"no split 'validation' for eval_split.*did you mean -p eval_split vaild\?"),
     ("my data", (), "found none there")],  # not org/name: never taken for a hub id
    ids=["missing-path", "valid-for-validation", "missing-split", "typo", "not-a-hub-id"],
)
def test_a_wrong_source_or_split_stops_before_a_kernel_or_a_run_folder(tmp_path, source, splits, message):
    from helpers.run_notebook import main

    if splits:
        yolo_folder(tmp_path / "data", splits)
    argv = ["-r", "dataset_source", source.format(tmp=tmp_path), "-r", "output_root", str(tmp_path / "out")]
    if message is None:
        from helpers.data.sources import check_splits

        check_splits(source.format(tmp=tmp_path), {"train": "train", "eval": "validation", "test": "test"})
        return
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_a_run_that_stopped_before_training_is_replaced_without_overwrite(tmp_path):
    stopped = prepare_run_dir(tmp_path, "again")
    write_json(stopped / "params.json", {"parameters": {}, "environment": {}})
    assert stopped_before_training(stopped)
    (stopped / "checkpoints" / "checkpoint-6").mkdir(parents=True)
    assert not stopped_before_training(stopped)  # a checkpoint is worth keeping: resume or --overwrite
    assert not stopped_before_training(tmp_path / "not-ours")


def test_the_runner_starts_again_where_a_run_stopped_before_training(tmp_path, monkeypatch):
    import helpers.run_notebook as runner

    stopped = prepare_run_dir(tmp_path, "again")
    (stopped / "notebook.ipynb").write_text("{}")  # what a run that failed in its data section leaves
    started = []
    monkeypatch.setattr(runner.papermill, "execute_notebook", lambda *args, **kwargs: started.append(kwargs["parameters"]))
    monkeypatch.setattr(runner, "report_run", lambda run_dir: run_dir)
    assert runner.main(["-r", "output_root", str(tmp_path), "-r", "run_name", "again"]) == stopped  # no --overwrite needed
    assert started and started[0]["output_root"] == str(tmp_path) and not (stopped / "notebook.ipynb").exists()
    (stopped / "metrics.json").write_text("{}")  # a run that trained is kept: resume, or --overwrite
    with pytest.raises(SystemExit, match="exists; choose another run_name, pass --overwrite, or resume"):
        runner.main(["-r", "output_root", str(tmp_path), "-r", "run_name", "again"])
