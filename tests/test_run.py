"""Parameter checks, run folders and strict JSON output."""

from __future__ import annotations

import json
import math

import pytest

from helpers.run import check_choice, check_parameters, prepare_run_dir, resolve_model_path, write_json, write_jsonl

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
        assert check_parameters(values, ANNOTATIONS) == values
    else:
        with pytest.raises(TypeError, match=error.replace("(", r"\(")):
            check_parameters(values, ANNOTATIONS)


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match=r"unknown parameters \['lerning_rate'\]"):
        check_parameters(GOOD | {"lerning_rate": 1.0}, ANNOTATIONS)


@pytest.mark.parametrize("value, ok", [("detection", True), ("grounding", True), ("Grounding", False), ("", False)])
def test_check_choice_names_the_parameter_and_the_choices(value, ok):
    if ok:
        assert check_choice("task", value, ("detection", "grounding")) == value
    else:
        with pytest.raises(ValueError, match=r"task=.* must be one of \('detection', 'grounding'\)"):
            check_choice("task", value, ("detection", "grounding"))


@pytest.mark.parametrize("run_name", ["", "a/b", "..", "."])
def test_bad_run_names(tmp_path, run_name):
    with pytest.raises(ValueError, match="must be a plain folder name"):
        prepare_run_dir(tmp_path, run_name)


def test_run_dir_layout(tmp_path):
    run_dir = prepare_run_dir(tmp_path, "r1")
    assert run_dir == tmp_path / "r1" and (run_dir / "plots").is_dir()


def test_resolve_model_path(tmp_path):
    assert resolve_model_path("Qwen/Qwen2-VL-2B-Instruct", tmp_path) == "Qwen/Qwen2-VL-2B-Instruct"
    assert resolve_model_path("offline:qwen3_vl", tmp_path) == str(tmp_path / "qwen3_vl")
    with pytest.raises(ValueError, match="offline:<family>"):
        resolve_model_path("offline:qwen9", tmp_path)


def test_json_writers_are_strict(tmp_path):
    write_json(tmp_path / "m.json", {"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    write_jsonl(tmp_path / "p.jsonl", [{"x": 1}, {"x": math.nan}])
    assert [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()] == [{"x": 1}, {"x": None}]
