"""The error analysis: every box judged from COCO's matching at IoU 0.5, counted by hand on small cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from helpers.evaluate.coco import run_coco
from helpers.evaluate.errors import (
    AP_50,
    BACKGROUND,
    CONFUSION,
    DUPLICATE,
    ERRORS,
    FALSE_NEGATIVES,
    FALSE_POSITIVE_KINDS,
    FALSE_POSITIVES,
    IGNORED,
    IGNORED_CROWD,
    LOCALISATION,
    MISSED,
    PER_CLASS,
    PRECISION,
    RECALL,
    TRUE_POSITIVE,
    TRUE_POSITIVES,
    error_analysis,
    judge_images,
    precision_recall_at,
    worst_images,
)
from helpers.evaluate.metrics import AP_50_PER_CLASS, summarize_detections

BOX = [100, 100, 200, 200]
OTHER_BOX = [400, 100, 500, 200]
FAR = [700, 700, 800, 800]


def obj(label: str, box: list, score: float | None = None) -> dict:
    return {"label": label, "bbox_xyxy_px": box} | ({} if score is None else {"score": score})


def record(ground_truth: list[dict], predictions: list[dict], crowd: list[dict] | None = None) -> dict:
    return {"ground_truth": ground_truth, "predictions": predictions, "crowd_regions": crowd or [], "raw_text": "x"}


# (case, records, each image's prediction kinds, each image's missed objects)
CASES = [
    ("exact", [record([obj("a", BOX)], [obj("a", BOX, 0.9)])], [[TRUE_POSITIVE]], [[]]),
    ("localisation: IoU 0.4", [record([obj("a", BOX)], [obj("a", [100, 100, 200, 140], 0.9)])], [[LOCALISATION]], [[0]]),
    ("confusion: another class on the object", [record([obj("a", BOX)], [obj("b", BOX, 0.9)])], [[CONFUSION]], [[0]]),
    ("duplicate: a second box on a taken object", [record([obj("a", BOX)], [obj("a", BOX, 0.9), obj("a", [100, 100, 200, 190], 0.8)])],
     [[TRUE_POSITIVE, DUPLICATE]], [[]]),
    ("duplicate: matching goes by score, not IoU", [record([obj("a", BOX)], [obj("a", [100, 100, 200, 170], 0.9), obj("a", BOX, 0.5)])],
     [[TRUE_POSITIVE, DUPLICATE]], [[]]),
    ("background: far from everything", [record([obj("a", BOX)], [obj("a", FAR, 0.9)])], [[BACKGROUND]], [[0]]),
    ("background: IoU 0.005 is no overlap", [record([obj("a", BOX)], [obj("a", [190, 190, 290, 290], 0.9)])], [[BACKGROUND]], [[0]]),
    ("confusion: another class at IoU 0.3, none of its own", [record([obj("b", BOX)], [obj("a", [100, 100, 200, 130], 0.9)])], [[CONFUSION]], [[0]]),
    ("confusion before localisation: other class 0.9, own class 0.3",
     [record([obj("a", [100, 100, 200, 130]), obj("b", BOX)], [obj("a", [100, 100, 200, 190], 0.9)])], [[CONFUSION]], [[0, 1]]),
    ("a label outside the classes on an object", [record([obj("a", BOX)], [obj("zebra", BOX, 0.9)])], [[CONFUSION]], [[0]]),
    ("a crowd region's box is ignored", [record([obj("a", BOX)], [obj("a", BOX, 0.9), obj("a", OTHER_BOX, 0.8)], crowd=[obj("a", OTHER_BOX)])],
     [[TRUE_POSITIVE, IGNORED]], [[]]),
    ("an image without objects", [record([], [obj("a", BOX, 0.9)])], [[BACKGROUND]], [[]]),
    ("nothing predicted", [record([obj("a", BOX), obj("b", OTHER_BOX)], [])], [[]], [[0, 1]]),
    ("two images", [record([obj("a", BOX)], [obj("a", BOX, 0.9)]), record([obj("b", BOX)], [obj("a", BOX, 0.7), obj("b", FAR, 0.6)])],
     [[TRUE_POSITIVE], [CONFUSION, BACKGROUND]], [[], [0]]),
]


@pytest.mark.parametrize("records,kinds,missed", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_box_is_judged_as_counted_by_hand(records, kinds, missed):
    judged = judge_images(records, ["a", "b"])
    assert [image.prediction_kinds for image in judged] == kinds
    assert [image.missed([p["score"] for p in r["predictions"]]) for image, r in zip(judged, records)] == missed
    errors = error_analysis(records, ["a", "b"])[ERRORS]
    flat = [kind for image in kinds for kind in image]
    assert errors[TRUE_POSITIVES] == flat.count(TRUE_POSITIVE) and errors[IGNORED_CROWD] == flat.count(IGNORED)
    assert {kind: errors[kind] for kind in FALSE_POSITIVE_KINDS} == {kind: flat.count(kind) for kind in FALSE_POSITIVE_KINDS}
    assert errors[FALSE_POSITIVES] == sum(errors[kind] for kind in FALSE_POSITIVE_KINDS)
    assert errors[FALSE_NEGATIVES] == sum(len(m) for m in missed)


def test_per_class_figures():
    # a: 3 objects, found 2, one box misplaced (IoU 0.4) and one on the b object; b: its object missed, one box on nothing.
    records = [
        record([obj("a", BOX), obj("a", OTHER_BOX)], [obj("a", BOX, 0.9), obj("a", [400, 100, 500, 140], 0.8)]),
        record([obj("a", BOX), obj("b", OTHER_BOX)], [obj("a", BOX, 0.7), obj("a", OTHER_BOX, 0.6), obj("b", FAR, 0.5)]),
    ]
    table = error_analysis(records, ["a", "b", "c"])[PER_CLASS]
    assert table["a"][PRECISION] == pytest.approx(2 / 4) and table["a"][RECALL] == pytest.approx(2 / 3)
    assert (table["a"]["true_positives"], table["a"]["false_positives"], table["a"]["false_negatives"]) == (2, 2, 1)
    assert table["b"][PRECISION] == 0 and table["b"][RECALL] == 0
    assert math.isnan(table["c"][PRECISION]) and math.isnan(table["c"][RECALL]) and math.isnan(table["c"][AP_50])
    # Per-class AP@.5 is COCO's own, as the metrics report it.
    coco = summarize_detections(records, ["a", "b", "c"])[AP_50_PER_CLASS]
    assert table["a"][AP_50] == pytest.approx(coco["a"]) and table["b"][AP_50] == pytest.approx(coco["b"])


def test_precision_and_recall_move_with_the_score_threshold():
    records = [record([obj("a", BOX), obj("a", OTHER_BOX)], [obj("a", BOX, 0.9), obj("a", FAR, 0.6), obj("a", OTHER_BOX, 0.3)])]
    judged = judge_images(records, ["a"])
    assert precision_recall_at(records, judged, 0.0) == (pytest.approx(2 / 3), pytest.approx(1.0), 3)
    assert precision_recall_at(records, judged, 0.5) == (pytest.approx(1 / 2), pytest.approx(1 / 2), 2)
    assert precision_recall_at(records, judged, 0.8) == (pytest.approx(1.0), pytest.approx(1 / 2), 1)
    assert judged[0].kinds([0.9, 0.6, 0.3], 0.8) == {MISSED}
    assert judged[0].kinds([0.9, 0.6, 0.3], 0.0) == {BACKGROUND}


def test_worst_images_rank_by_count_of_the_kind():
    records = [record([obj("a", BOX)], [obj("a", FAR, 0.9)]), record([obj("a", BOX)], [obj("a", FAR, 0.9), obj("a", OTHER_BOX, 0.8)]),
               record([obj("a", BOX)], [obj("a", BOX, 0.9)])]
    judged = judge_images(records, ["a"])
    assert worst_images(judged, records, BACKGROUND, 5) == [1, 0]
    assert worst_images(judged, records, MISSED, 1) == [0]
    assert worst_images(judged, records, DUPLICATE, 5) == []


coordinate = st.integers(0, 300)


@st.composite
def boxes(draw, label_pool=("a", "b"), scored=False):
    x, y = draw(coordinate), draw(coordinate)
    w, h = draw(st.integers(5, 120)), draw(st.integers(5, 120))
    box = obj(draw(st.sampled_from(label_pool)), [x, y, x + w, y + h])
    return box | ({"score": draw(st.floats(0.01, 1.0))} if scored else {})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(boxes(), max_size=5), st.lists(boxes(("a", "b", "c"), scored=True), max_size=6)), min_size=1, max_size=4))
def test_the_split_adds_up_and_recall_is_cocos(images):
    records = [record(gt, preds) for gt, preds in images]
    run = run_coco(records, ["a", "b"])
    analysis = error_analysis(records, ["a", "b"], run)
    errors = analysis[ERRORS]
    assert errors[FALSE_POSITIVES] == sum(errors[kind] for kind in FALSE_POSITIVE_KINDS)
    assert errors[TRUE_POSITIVES] + errors[FALSE_POSITIVES] + errors[IGNORED_CROWD] == sum(len(r["predictions"]) for r in records)
    assert errors[TRUE_POSITIVES] + errors[FALSE_NEGATIVES] == sum(len(r["ground_truth"]) for r in records)
    if run.evaluation is not None:  # recall at IoU 0.5 per class equals COCO's own (all areas, 100 detections)
        for k, name in enumerate(run.names):
            coco_recall = run.evaluation.eval["recall"][0, k, 0, -1]
            if coco_recall > -1:
                assert analysis[PER_CLASS][name][RECALL] == pytest.approx(coco_recall)
