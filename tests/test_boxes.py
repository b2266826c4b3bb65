"""Box formats: round trips through each family's answer text, and a parser that never raises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.boxes import box_iou, parse_model_answer, resized_size, sort_objects, to_model_answer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IMAGE_SIZES = [(96, 224), (224, 96), (640, 480), (33, 1200), (3000, 2000), (57, 57)]


def random_objects(rng, width, height, n):
    """``n`` random valid boxes inside a ``width`` x ``height`` image."""
    objects = []
    for i in range(n):
        x1, x2 = sorted(rng.uniform(0, width, 2))
        y1, y2 = sorted(rng.uniform(0, height, 2))
        objects.append({"label": f"class {i % 3}", "bbox_xyxy_px": [x1, y1, x2 + 1e-3, y2 + 1e-3]})
    return objects


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,height", IMAGE_SIZES)
def test_round_trip_within_quantisation(family, width, height):
    rng = np.random.default_rng(width * height)
    model_size = resized_size(family, width, height, 3136, 1003520)
    objects = random_objects(rng, width, height, 4)
    parsed = parse_model_answer(to_model_answer(objects, family, (width, height), model_size), family, (width, height), model_size)
    if family == "qwen2_5_vl":  # half a resized pixel of rounding, mapped back to original pixels
        tol_x, tol_y = 0.5 * width / model_size[0] + 1e-6, 0.5 * height / model_size[1] + 1e-6
    else:  # half of 1/1000 of the side
        tol_x, tol_y = 0.5 * width / 1000 + 1e-6, 0.5 * height / 1000 + 1e-6
    expected = sort_objects(objects)
    assert [p["label"] for p in parsed] == [e["label"] for e in expected]
    for p, e in zip(parsed, expected):
        for axis, (got, want) in enumerate(zip(p["bbox_xyxy_px"], e["bbox_xyxy_px"])):
            assert abs(got - want) <= (tol_x if axis % 2 == 0 else tol_y)


@pytest.mark.parametrize(
    "family,expected_start",
    [("qwen2_vl", "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,250),(500,750)<|box_end|>"),
     ("qwen2_5_vl", '[{"bbox_2d": [22, 56, 112, 168], "label": "cat"}]'),
     ("qwen3_vl", '[{"bbox_2d": [100, 250, 500, 750], "label": "cat"}]')],
)
def test_answer_text_per_family(family, expected_start):
    # 200x200 image, resized to 224x224 for qwen2/2.5 (multiple of 28) with these bounds.
    objects = [{"label": "cat", "bbox_xyxy_px": [20, 50, 100, 150]}]
    model_size = resized_size(family, 200, 200, 224 * 224, 224 * 224)
    assert to_model_answer(objects, family, (200, 200), model_size) == expected_start


@pytest.mark.parametrize(
    "text,n_boxes",
    [
        ("", 0),
        ("no objects here", 0),
        ("[]", 0),
        ("```json\n" + json.dumps([{"bbox_2d": [10, 10, 50, 50], "label": "a"}]) + "\n```", 1),
        ('Sure! [{"bbox_2d": [10, 10, 50, 50], "label": "a"}, {"bbox_2d": [60, 60, 9', 1),  # truncated list
        ('[{"bbox_2d": [50, 50, 10, 10], "label": "swapped"}]', 1),
        ('[{"bbox_2d": [-20, 5, 99999, 50], "label": "out of range"}]', 1),
        ('[{"bbox_2d": [1, 2, 3], "label": "three numbers"}]', 0),
        ('[{"bbox_2d": ["a", 2, 3, 4], "label": "strings"}]', 0),
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(10,10),(50,50)<|box_end|>", 1),
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(10,10),(50", 0),
        ("{{{{ ]]]] \x00 \ufffd", 0),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_parser_never_raises_and_keeps_boxes_inside(family, text, n_boxes):
    parsed = parse_model_answer(text, family, (100, 80), (112, 84))
    assert len(parsed) == n_boxes
    for obj in parsed:
        x1, y1, x2, y2 = obj["bbox_xyxy_px"]
        assert 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 80


@pytest.mark.parametrize(
    "a,b,iou",
    [([0, 0, 10, 10], [0, 0, 10, 10], 1.0), ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),
     ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150), ([0, 0, 0, 10], [0, 0, 0, 10], 0.0)],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown family"):
        resized_size("qwen_vl", 10, 10, 100, 1000)
