"""One label rule in every loader, the targets and the metrics."""

from __future__ import annotations

import json

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from helpers.families.boxes import parse_model_answer, resized_size, to_model_answer
from helpers.data.report import DataError
from helpers.data.sources import load_detection_splits
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.labels import MAX_LABEL_CHARS, label_problem, normalize_label
from helpers.evaluate.metrics import MAP_50, summarize_detections
from helpers.data.sources import LoadOptions
from helpers.families.registry import get_family



@pytest.mark.parametrize(
    "raw,normalized,problem",
    [
        ("cat", "cat", None),
        (" pen ", "pen", None),  # a real export's trailing space
        ("red \t  circle", "red circle", None),
        ("traffic light", "traffic light", None),
        ("", "", "empty_label"),
        ("   ", "", "empty_label"),
        ("cat<|im_end|>", "cat<|im_end|>", "label_with_markup"),  # would end the turn after 4 tokens
        ("<|box_start|>(1,2),(3,4)<|box_end|>", "<|box_start|>(1,2),(3,4)<|box_end|>", "label_with_markup"),  # a phantom box
        ("<|image_pad|>", "<|image_pad|>", "label_with_markup"),  # asks for an image that is not there
        ("dog <think>", "dog <think>", "label_with_markup"),
        ("a{b", "a{b", "label_with_markup"),  # breaks JSON targets
        ("a}", "a}", "label_with_markup"),
        ("two\nlines", "two\nlines", "label_with_markup"),
        ("x" * MAX_LABEL_CHARS, "x" * MAX_LABEL_CHARS, None),
        ("x" * 100_000, "x" * 100_000, "long_label"),  # would make a 200,000-token sequence
        ("C++ (lang) 3.5\"", "C++ (lang) 3.5\"", None),  # punctuation a JSON writer escapes is fine
    ],
)
def test_label_rule(raw, normalized, problem):
    assert normalize_label(raw) == normalized
    assert label_problem(normalize_label(raw)) == problem


BAD_LABELS = ["cat<|im_end|>", "<|box_start|>(1,2),(3,4)<|box_end|>", "a{b", "x" * 1000, ""]


def coco_source(root, names: list[str]):
    """A COCO split with one 100x80 image holding one box per category name."""
    split = root / "train"
    split.mkdir(parents=True)
    PILImage.new("RGB", (100, 80)).save(split / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
            "annotations": [{"id": i, "image_id": 1, "bbox": [5 + 10 * i, 5, 8, 8], "category_id": i + 1, "iscrowd": 0}
                            for i in range(len(names))]}
    (split / "annotations.json").write_text(json.dumps(coco))


def jsonl_source(root, names: list[str]):
    """A JSONL split with one 100x80 image holding one box per label."""
    root.mkdir(parents=True)
    PILImage.new("RGB", (100, 80)).save(root / "a.png")
    objects = [{"label": name, "bbox": [5 + 10 * i, 5, 13 + 10 * i, 13]} for i, name in enumerate(names)]
    (root / "train.jsonl").write_text(json.dumps({"image": "a.png", "objects": objects}))


def hub_source(root, names: list[str]):
    """A save_to_disk hub-layout split whose ClassLabel holds the names."""
    features = Features({"image": Image(), "objects": List({"bbox": List(Value("float32"), length=4), "category": ClassLabel(names=names)})})
    row = {"image": PILImage.new("RGB", (100, 80)), "objects": [{"bbox": [5 + 10 * i, 5, 8, 8], "category": i} for i in range(len(names))]}
    DatasetDict({"train": Dataset.from_list([row], features=features)}).save_to_disk(root)


@pytest.mark.parametrize("make_source", [coco_source, jsonl_source, hub_source])
def test_every_loader_normalises_labels_and_refuses_bad_ones(tmp_path, make_source):
    make_source(tmp_path / "src", ["pen ", "red  circle", *BAD_LABELS])
    splits, reports = load_detection_splits(str(tmp_path / "src"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh"))
    assert [obj["label"] for obj in splits["train"][0]["objects"]] == ["pen", "red circle"]
    counts = reports["train"].counts
    assert (counts["label_with_markup"], counts["long_label"], counts["empty_label"]) == (3, 1, 1)
    with pytest.raises(DataError, match="label 'cat<\\|im_end\\|>' holds a tag"):
        load_detection_splits(str(tmp_path / "src"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh", strict=True))


def test_known_classes_are_normalised_like_the_labels(tmp_path):
    jsonl_source(tmp_path / "src", ["pen ", "cup"])
    splits, _ = load_detection_splits(str(tmp_path / "src"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xyxy", known_classes=[" pen"]))
    assert [obj["label"] for obj in splits["train"][0]["objects"]] == ["pen"]


@pytest.mark.parametrize("family", [get_family("qwen2_vl"), get_family("qwen2_5_vl"), get_family("qwen3_vl")])
def test_a_perfect_answer_scores_1_whatever_the_spacing_of_a_coco_name(tmp_path, family):
    coco_source(tmp_path / "src", ["pen ", "coffee  cup"])
    splits, _ = load_detection_splits(str(tmp_path / "src"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh"))
    record = splits["train"][0]
    size = (record["width"], record["height"])
    model_size = resized_size(family, *size, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    answer = to_model_answer(record["objects"], family, size, model_size).replace("pen", " pen ")  # a model's own spacing
    predictions = [p | {"score": 1.0} for p in parse_model_answer(answer, family, size, model_size)]
    metrics = summarize_detections([{"ground_truth": record["objects"], "predictions": predictions, "raw_text": answer}])
    assert metrics[MAP_50] == pytest.approx(1.0)
