"""Box formats: round trips through each family's answer text, and a parser that never raises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.families.boxes import (
    box_iou,
    clip_xyxy,
    drop_duplicate_boxes,
    object_texts,
    parse_model_answer,
    resized_size,
    sort_objects,
    to_model_answer,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import get_family
from tests.cases import FAMILIES, IMAGE_SIZES, PIXEL_BOUNDS



def random_objects(rng, width, height, n):
    """``n`` random valid boxes inside a ``width`` x ``height`` image, plus the whole image and a corner pixel."""
    objects = [
        {"label": "whole image", "bbox_xyxy_px": [0.0, 0.0, float(width), float(height)]},
        {"label": "corner", "bbox_xyxy_px": [width - min(1.0, width / 2), height - min(1.0, height / 2), float(width), float(height)]},
    ]
    for i in range(n):
        x1, x2 = sorted(rng.uniform(0, width, 2))
        y1, y2 = sorted(rng.uniform(0, height, 2))
        objects.append({"label": f"class {i % 3} é", "bbox_xyxy_px": [x1, y1, x2, y2]})
    return objects


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,height", IMAGE_SIZES)
@pytest.mark.parametrize("min_pixels,max_pixels", PIXEL_BOUNDS)
def test_round_trip_within_quantisation(family, width, height, min_pixels, max_pixels):
    rng = np.random.default_rng(width * 7919 + height)
    model_size = resized_size(family, width, height, min_pixels, max_pixels)
    objects = random_objects(rng, width, height, 6)
    answer = to_model_answer(objects, family, (width, height), model_size)
    parsed = parse_model_answer(answer, family, (width, height), model_size)
    # The format's quantum: 1 resized pixel mapped back (absolute) or 1/1000 of the side (relative);
    # rounding to the nearest integer keeps the error within half of it.
    if not family.relative:
        tol_x, tol_y = 0.5 * width / model_size[0] + 1e-6, 0.5 * height / model_size[1] + 1e-6
    else:
        tol_x, tol_y = 0.5 * width / 1000 + 1e-6, 0.5 * height / 1000 + 1e-6
    expected = sort_objects(objects)
    assert [p["label"] for p in parsed] == [e["label"] for e in expected]
    for p, e in zip(parsed, expected):
        x1, y1, x2, y2 = p["bbox_xyxy_px"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        for axis, (got, want) in enumerate(zip(p["bbox_xyxy_px"], e["bbox_xyxy_px"])):
            assert abs(got - want) <= (tol_x if axis % 2 == 0 else tol_y)


@pytest.mark.parametrize("family", FAMILIES)
def test_objects_are_written_by_label_then_top_to_bottom_then_left_to_right(family):
    objects = [
        {"label": "b", "bbox_xyxy_px": [0, 0, 10, 10]},
        {"label": "a", "bbox_xyxy_px": [0, 50, 10, 60]},
        {"label": "a", "bbox_xyxy_px": [50, 0, 60, 10]},
        {"label": "a", "bbox_xyxy_px": [0, 0, 10, 10]},
    ]
    answer = to_model_answer(objects, family, (100, 100), (100, 100))
    parsed = parse_model_answer(answer, family, (100, 100), (100, 100))
    assert [(o["label"], o["bbox_xyxy_px"][:2]) for o in parsed] == [("a", [0, 0]), ("a", [50, 0]), ("a", [0, 50]), ("b", [0, 0])]


@pytest.mark.parametrize(
    "family,expected_start",
    [(get_family("qwen2_vl"), "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,250),(500,750)<|box_end|>"),
     (get_family("qwen2_5_vl"), '[{"bbox_2d": [22, 56, 112, 168], "label": "cat"}]'),
     (get_family("qwen3_vl"), '[{"bbox_2d": [100, 250, 500, 750], "label": "cat"}]'),
     (get_family("qwen3_vl_moe"), '[{"bbox_2d": [100, 250, 500, 750], "label": "cat"}]'),
     (get_family("qwen3_5"), '[{"bbox_2d": [100, 250, 500, 750], "label": "cat"}]'),
     (get_family("qwen3_5_moe"), '[{"bbox_2d": [100, 250, 500, 750], "label": "cat"}]')],
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
        ('[{"bbox_2d": [NaN, 1, 2, 3], "label": "nan"}, {"bbox_2d": [1, 2, Infinity, 4], "label": "inf"}]', 0),
        ('[{"bbox_2d": [true, 1, 2, 3], "label": "boolean"}]', 0),
        ('[{"bbox_2d": [1, 2, 30, 40], "label": 7}]', 1),  # a non-string label is kept as text
        ('[{"bbox": [1, 2, 30, 40], "label": "plain bbox key"}]', 1),
        ('[{"box_2d": [1, 2, 30, 40], "label": "y-first key is ambiguous"}]', 0),
        ('{"bbox_2d": [1, 2, 30, 40], "label": "no list"}', 1),
        ('{"objects": [{"bbox_2d": [1, 2, 30, 40], "label": "nested"}]}', 1),
        ('Here you go: [{"bbox_2d": [1, 2, 30, 40], "label": "a"}] Hope this helps! {"note": 1}', 1),
        ('[{"bbox_2d": [1, 2, 30, 40], "label": "a"}, {"bbox_2d": [5, 6, 70, 80], "label": "b"}, {"bbox_2d"', 2),
        ("<|box_start|>(10,10),(50,50)<|box_end|>", 1),  # no object_ref: label ""
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,1),(5,5)<|box_end|><|box_start|>(6,6),(9,9)<|box_end|>", 2),
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(1e9,1),(5,5)<|box_end|>", 0),
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(99999999999999999999,1),(5,5)<|box_end|>", 1),
        ("(10,10),(50,50)", 0),  # tags stripped by skip_special_tokens: no frame to trust
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_parser_never_raises_and_keeps_boxes_inside(family, text, n_boxes):
    parsed = parse_model_answer(text, family, (100, 80), (112, 84))
    assert len(parsed) == n_boxes
    for obj in parsed:
        x1, y1, x2, y2 = obj["bbox_xyxy_px"]
        assert 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 80


@pytest.mark.parametrize("text", [None, 123, b"bytes", ["list"]])
def test_parser_returns_nothing_for_non_strings(text):
    assert parse_model_answer(text, get_family("qwen2_vl"), (10, 10), (28, 28)) == []


@pytest.mark.parametrize(
    "text,family,expected",
    [
        # The tag syntax is 0..1000 whatever the family; JSON follows the family's frame.
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(100,250),(500,750)<|box_end|>", get_family("qwen2_5_vl"), [20, 50, 100, 150]),
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(100,250),(500,750)<|box_end|>", get_family("qwen3_vl"), [20, 50, 100, 150]),
        ('[{"bbox_2d": [100, 250, 500, 750], "label": "a"}]', get_family("qwen2_vl"), [20, 50, 100, 150]),
        ('[{"bbox_2d": [22, 56, 112, 168], "label": "a"}]', get_family("qwen2_5_vl"), [200 * 22 / 224, 200 * 56 / 224, 100, 150]),
        ('[{"bbox_2d": [500, 750, 100, 250], "label": "a"}]', get_family("qwen3_vl"), [20, 50, 100, 150]),  # swapped corners
        ('[{"bbox_2d": [-100, 250, 1500, 750], "label": "a"}]', get_family("qwen3_vl"), [0, 50, 200, 150]),  # clipped
    ],
)
def test_parsed_values_per_frame(text, family, expected):
    (parsed,) = parse_model_answer(text, family, (200, 200), (224, 224))
    assert parsed["label"] == "a"
    assert parsed["bbox_xyxy_px"] == pytest.approx(expected)


def test_a_label_never_swallows_tags():
    text = "<|object_ref_start|>a<|object_ref_end|> junk <|object_ref_start|>b<|object_ref_end|><|box_start|>(1,1),(5,5)<|box_end|>"
    assert [o["label"] for o in parse_model_answer(text, get_family("qwen2_vl"), (10, 10), (28, 28))] == ["b"]


@pytest.mark.parametrize(
    "a,b,iou",
    [([0, 0, 10, 10], [0, 0, 10, 10], 1.0), ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),
     ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150), ([0, 0, 0, 10], [0, 0, 0, 10], 0.0)],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)


@pytest.mark.parametrize(
    "xywh,xyxy",
    [([10, 20, 30, 40], [10, 20, 40, 60]), ([0.5, 0, 0, 2.25], [0.5, 0, 0.5, 2.25]), ([-4, -4, 8, 8], [-4, -4, 4, 4])],
)
def test_xywh_and_xyxy_convert_both_ways(xywh, xyxy):
    assert xywh_to_xyxy(xywh) == xyxy and xyxy_to_xywh(xyxy) == xywh


@pytest.mark.parametrize(
    "box,clipped",
    [([1.5, 2, 3, 4], [1.5, 2, 3, 4]), ([-3, -1, 50, 40], [0.0, 0.0, 20, 10]), ([25, 12, 30, 15], [20, 10, 20, 10]),
     ([-5, 3, -1, 4], [0.0, 3, 0.0, 4])],
)
def test_clip_xyxy_keeps_each_corner_inside_a_20x10_image(box, clipped):
    assert clip_xyxy(box, 20, 10) == clipped


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown family"):
        resized_size(get_family("qwen_vl"), 10, 10, 100, 1000)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_truncation_keeps_the_complete_boxes_before_the_cut(family):
    objects = [{"label": f"obj {i}", "bbox_xyxy_px": [10 * i, 5 * i, 10 * i + 30, 5 * i + 20]} for i in range(4)]
    model_size = resized_size(family, 120, 90, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    answer = to_model_answer(objects, family, (120, 90), model_size)
    full = parse_model_answer(answer, family, (120, 90), model_size)
    previous = 0
    for cut in range(len(answer) + 1):
        parsed = parse_model_answer(answer[:cut], family, (120, 90), model_size)
        assert parsed == full[: len(parsed)]  # a prefix of the complete answer's boxes, never a partial one
        assert previous <= len(parsed) <= previous + 1
        previous = len(parsed)
    assert previous == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_random_corruption_never_raises(family):
    rng = np.random.default_rng(1)
    answer = to_model_answer([{"label": "a", "bbox_xyxy_px": [1, 2, 50, 60]}] * 3, family, (100, 80), (112, 84))
    alphabet = list('{}[]()<>|,:"0123456789.-eE aNIfinity') + ["<|box_start|>", "<|object_ref_end|>", "\x00", "é"]
    for _ in range(300):
        chars = list(answer)
        for _ in range(int(rng.integers(1, 6))):
            chars[int(rng.integers(len(chars)))] = alphabet[int(rng.integers(len(alphabet)))]
        for obj in parse_model_answer("".join(chars), family, (100, 80), (112, 84)):
            x1, y1, x2, y2 = obj["bbox_xyxy_px"]
            assert 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 80


def scored(label: str, box: list[float], score: float) -> dict:
    """A prediction as evaluation records it."""
    return {"label": label, "bbox_xyxy_px": box, "score": score}


@pytest.mark.parametrize(
    "predictions,iou_threshold,kept,dropped",
    [
        ([scored("a", [0, 0, 10, 10], 0.5), scored("a", [0, 0, 10, 10], 0.9)], 0.95, [1], 1),  # the higher score stays
        ([scored("a", [0, 0, 10, 10], 0.9), scored("a", [0, 0, 10, 10.2], 0.5)], 0.95, [0], 1),  # IoU 0.98
        ([scored("a", [0, 0, 10, 10], 0.9), scored("a", [0, 0, 10, 12], 0.5)], 0.95, [0, 1], 0),  # IoU 0.83
        ([scored("a", [0, 0, 10, 10], 0.9), scored("b", [0, 0, 10, 10], 0.5)], 0.95, [0, 1], 0),  # another label
        ([scored("a", [5, 5, 5, 5], 0.9), scored("a", [5, 5, 5, 5], 0.5)], 0.95, [0], 1),  # identical, zero area
        ([scored("a", [0, 0, 10, 10], 0.9), scored("a", [0, 0, 10, 10], 0.9)], 1.0, [0], 1),  # 1.0: identical only
        ([scored("a", [0, 0, 10, 10], 0.9), scored("a", [0, 0, 10, 10], 0.9)], 0, [0, 1], 0),  # 0: off
        ([scored("a", [0, 0, 10, 10], 0.1), scored("a", [50, 50, 60, 60], 0.8), scored("a", [0, 0, 10, 10], 0.7)], 0.95, [1, 2], 1),
    ],
)
def test_drop_duplicate_boxes(predictions, iou_threshold, kept, dropped):
    assert drop_duplicate_boxes(predictions, iou_threshold) == ([predictions[i] for i in kept], dropped)


@pytest.mark.parametrize(
    "text,expected",
    [
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1,2,3,4], "label":"a"}, {"point_2d": [1, 2]}]',
         ['{"bbox_2d":[1,2,3,4],"label":"a"}'] * 2),
        ("<|box_start|>(1,2),(3,4)<|box_end|> <|box_start|>( 1,2),(3,4)<|box_end|>", ["<|box_start|>(1,2),(3,4)<|box_end|>"] * 2),
        ('[{"bbox_2d": [1, 2, 3', []),
    ],
)
def test_object_texts_ignore_whitespace(text, expected):
    assert object_texts(text) == expected
