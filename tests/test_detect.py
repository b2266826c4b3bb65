"""Using a trained model: model/ alone is enough, from Python and from the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest

from helpers.data.images import open_image
from helpers.data.synthetic import make_synthetic_dataset
from helpers.detect import INFERENCE_FILE, Detector, InferenceSettings, main, save_inference_settings
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import get_family
from helpers.run_notebook import REPO_ROOT

CLASSES = ["red circle", "green square"]


def settings(**changes) -> InferenceSettings:
    """The settings a detection run on the tiny Qwen2.5-VL would save."""
    values = dict(model_type="qwen2_5_vl", task="detection", class_names=CLASSES, system_prompt="", min_pixels=DEFAULT_MIN_PIXELS,
                  max_pixels=DEFAULT_MAX_PIXELS, max_new_tokens=12, loop_repeats=3, duplicate_iou=0.95, base_model="")
    return InferenceSettings(**(values | changes))


@pytest.fixture()
def run_folder(tiny_checkpoints, tmp_path):
    """A finished run folder whose model/ holds whole weights, the processor and inference.json."""
    shutil.copytree(tiny_checkpoints["qwen2_5_vl"], tmp_path / "run" / "model")
    save_inference_settings(tmp_path / "run" / "model", settings())
    image = tmp_path / "photo.png"
    open_image(make_synthetic_dataset(1, seed=3)[0]["image"]).save(image)
    return tmp_path / "run", image


def test_a_run_folder_or_its_model_folder_detects_with_the_saved_prompt(run_folder):
    run_dir, image = run_folder
    for folder in (run_dir, run_dir / "model"):
        result = Detector.from_folder(folder)(image)
        assert result.prompt.startswith("Detect every red circle, green square in the image.")
        assert isinstance(result.raw_answer, str) and all(set(box) == {"label", "bbox_xyxy_px", "score"} for box in result.boxes)


@pytest.mark.parametrize(
    "classes,task,message",
    [(["ball"], "detection", r"trained to find \['red circle', 'green square'\]; it was not trained on \['ball'\]"),
     ([], "detection", "not trained on an empty list"),
     (CLASSES, "grounding", "a grounding model finds one class per question")],
)
def test_asking_for_what_the_model_was_not_trained_on_says_so(classes, task, message):
    with pytest.raises(ValueError, match=message):
        settings(task=task).prompt(get_family("qwen2_5_vl"), classes)


def test_a_subset_of_the_classes_and_a_grounding_question_use_the_training_prompts():
    family = get_family("qwen3_vl")
    assert settings().prompt(family, ["green square"]).startswith("Detect every green square in the image.")
    assert settings(task="grounding").prompt(family, ["red circle"]).startswith("Locate every red circle in the image.")


def test_an_unfinished_run_folder_says_what_is_missing(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"no {INFERENCE_FILE} .*still training, or stopped before saving"):
        Detector.from_folder(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="not a run folder or model/ folder"):
        Detector.from_folder(tmp_path)


def test_the_command_line_prints_boxes_and_the_raw_answer_and_draws_them(run_folder, tmp_path, capsys):
    run_dir, image = run_folder
    report = main([str(run_dir), str(image), "--out", str(tmp_path / "drawn.png"), "--classes", "red circle"])
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1]) == report and set(report) == {"boxes", "raw_answer", "prompt"}
    assert report["prompt"].startswith("Detect every red circle in the image.") and (tmp_path / "drawn.png").is_file()
    assert all(len(str(v).split(".")[-1]) <= 1 for box in report["boxes"] for v in box["bbox_xyxy_px"])  # a tenth of a pixel


def test_the_command_line_refuses_an_untrained_class_in_one_line(run_folder):
    run_dir, image = run_folder
    out = subprocess.run([sys.executable, "-m", "helpers.detect", str(run_dir), str(image), "--classes", "ball"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("this model was trained to find")
    assert "Traceback" not in out.stderr


def test_settings_round_trip_through_their_file(tmp_path):
    path = save_inference_settings(tmp_path, settings(task="grounding"))
    assert InferenceSettings(**json.loads(path.read_text())) == settings(task="grounding") and asdict(settings())["base_model"] == ""
