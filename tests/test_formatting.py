"""Chat formatting: detection and grounding prompts, grounding records, per-record prompts."""

from __future__ import annotations

import pytest
from datasets import Dataset

from helpers.families.boxes import parse_model_answer, resized_size
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import (
    add_chat_columns,
    detection_prompt,
    expand_for_grounding,
    grounding_prompt,
    task_prompts,
)
from helpers.data.schema import DETECTION_FEATURES
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import TAGS, get_family
from tests.cases import FAMILIES



def records(objects_per_image: list[list[tuple[str, list[float]]]]) -> Dataset:
    """A small dataset in the project schema: one 100x80 image per entry, with the given (label, box) objects."""
    from PIL import Image

    rows = [
        {"image_id": f"img{i}", "image": Image.new("RGB", (100, 80)), "width": 100, "height": 80,
         "objects": [{"label": label, "bbox_xyxy_px": box} for label, box in objects], "crowd_regions": []}
        for i, objects in enumerate(objects_per_image)
    ]
    return Dataset.from_list(rows, features=DETECTION_FEATURES)


CAT, DOG = ("cat", [1.0, 2.0, 30.0, 40.0]), ("dog", [50.0, 10.0, 90.0, 70.0])
CAT2 = ("cat", [60.0, 50.0, 80.0, 75.0])


@pytest.mark.parametrize(
    "objects_per_image, expected",
    [
        # (image_id/label, query, boxes) per grounding record
        ([[CAT]], [("img0/cat", "cat", [CAT[1]])]),
        ([[CAT, DOG]], [("img0/cat", "cat", [CAT[1]]), ("img0/dog", "dog", [DOG[1]])]),
        ([[DOG, CAT, CAT2]], [("img0/dog", "dog", [DOG[1]]), ("img0/cat", "cat", [CAT[1], CAT2[1]])]),
        ([[], [CAT]], [("img1/cat", "cat", [CAT[1]])]),  # an image without objects asks no question
        ([[CAT], [CAT, DOG]], [("img0/cat", "cat", [CAT[1]]), ("img1/cat", "cat", [CAT[1]]), ("img1/dog", "dog", [DOG[1]])]),
    ],
    ids=["one", "two-classes", "repeated-class", "empty-image", "two-images"],
)
def test_expand_for_grounding_makes_one_record_per_image_and_class(objects_per_image, expected):
    grounded = expand_for_grounding(records(objects_per_image))
    got = [(r["image_id"], r["query"], [o["bbox_xyxy_px"] for o in r["objects"]]) for r in grounded]
    assert got == expected
    assert all(o["label"] == r["query"] for r in grounded for o in r["objects"])
    assert grounded.features["objects"] == DETECTION_FEATURES["objects"]


def test_expand_for_grounding_keeps_each_record_on_its_own_image():
    data = make_synthetic_dataset(12, seed=5, max_objects=4)
    grounded = expand_for_grounding(data)
    assert len(grounded) == sum(len({o["label"] for o in objs}) for objs in data["objects"])
    by_id = {r["image_id"]: r for r in data}
    for record in grounded:
        source = by_id[record["image_id"].rsplit("/", 1)[0]]
        assert (record["width"], record["height"]) == (source["width"], source["height"])
        assert record["image"] == source["image"]


@pytest.mark.parametrize("family", FAMILIES)
def test_task_prompts_name_the_classes_and_the_family_syntax(family):
    data = expand_for_grounding(records([[CAT, DOG], [DOG]]))
    assert task_prompts(data, family, "detection", ["cat", "dog"]) == [detection_prompt(family, ["cat", "dog"])] * 3
    grounding = task_prompts(data, family, "grounding", ["cat", "dog"])
    assert grounding == [grounding_prompt(family, label) for label in ("cat", "dog", "dog")]
    assert "Locate every cat in the image" in grounding[0] and "dog" not in grounding[0]
    syntax = "<|box_start|>" if family.answer_syntax == TAGS else "bbox_2d"
    assert all(syntax in prompt for prompt in grounding)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: task_prompts(records([[CAT]]), get_family("qwen2_vl"), "grounding", ["cat"]), ValueError, "run expand_for_grounding first"),
        (lambda: task_prompts(records([[CAT]]), get_family("qwen2_vl"), "segmentation", ["cat"]), ValueError, "unknown task 'segmentation'"),
        (lambda: grounding_prompt(get_family("llava"), "cat"), ValueError, "unknown family 'llava'"),
        (lambda: add_chat_columns(records([[CAT], [DOG]]), get_family("qwen2_vl"), ["one"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS),
         ValueError, "1 prompts for 2 records"),
    ],
    ids=["grounding-without-query", "unknown-task", "unknown-family", "prompt-count"],
)
def test_bad_formatting_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("family", FAMILIES)
def test_grounding_answers_hold_only_the_named_class_in_the_family_frame(family):
    data = expand_for_grounding(records([[CAT, DOG, CAT2]]))
    data = add_chat_columns(data, family, task_prompts(data, family, "grounding", ["cat", "dog"]), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model_size = resized_size(family, 100, 80, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    for record in data:
        parsed = parse_model_answer(record["answer"], family, (100, 80), model_size)
        assert {box["label"] for box in parsed} == {record["query"]}
        assert len(parsed) == len(record["objects"])
        assert record["prompt"] == grounding_prompt(family, record["query"])

