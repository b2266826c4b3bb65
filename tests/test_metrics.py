"""Greedy IoU matching and the detection summary, on hand-built cases."""

from __future__ import annotations

import math

import pytest

from helpers.evaluate.metrics import (
    AP_50_PER_CLASS,
    AR_100,
    MAP_50,
    MAP_50_95,
    MAP_75,
    MEAN_IOU,
    N_IMAGES,
    N_PREDICTIONS,
    PARSE_FAILURE_RATE,
    PR_CURVE_50,
    PRECISION_50,
    RECALL_50,
    coco_metrics,
    format_comparison,
    grounding_accuracy,
    is_parse_failure,
    match_boxes,
    summarize_detections,
)


def obj(label, box, score=None):
    return {"label": label, "bbox_xyxy_px": box} | ({} if score is None else {"score": score})


def record(ground_truth, predictions, raw_text="answer"):
    return {"ground_truth": ground_truth, "predictions": predictions, "raw_text": raw_text}


def independent_ap(ranked_hits: list[bool], n_ground_truth: int) -> float:
    """101-point interpolated AP from detections sorted by score (True = true positive), written from the definition."""
    precisions, recalls, tp = [], [], 0
    for rank, hit in enumerate(ranked_hits, start=1):
        tp += hit
        precisions.append(tp / rank)
        recalls.append(tp / n_ground_truth)
    points = [i / 100 for i in range(101)]
    return sum(max([p for p, r in zip(precisions, recalls) if r >= point], default=0.0) for point in points) / 101


def test_matching_is_one_to_one_within_class():
    gt = [obj("a", [0, 0, 10, 10]), obj("a", [20, 0, 30, 10])]
    preds = [obj("a", [0, 0, 10, 10]), obj("a", [1, 0, 11, 10]), obj("b", [20, 0, 30, 10])]
    matches = match_boxes(gt, preds)
    assert [(g, p) for g, p, _ in matches] == [(0, 0)]  # the 2nd "a" overlaps gt 0 only; "b" is another class


@pytest.mark.parametrize(
    "raw,preds,failed",
    [("", [], False), ("[]", [], False), ("```json\n[]\n```", [], False), ("garbage", [], True), ("x", [obj("a", [0, 0, 1, 1])], False)],
)
def test_parse_failure(raw, preds, failed):
    assert is_parse_failure(raw, preds) is failed


def test_summary_numbers():
    records = [
        {"raw_text": "..", "ground_truth": [obj("a", [0, 0, 10, 10]), obj("b", [20, 20, 30, 30])],
         "predictions": [obj("a", [0, 0, 10, 10], 0.9), obj("b", [25, 20, 35, 30], 0.8)]},  # IoU 1 and 50/150
        {"raw_text": "junk", "ground_truth": [obj("a", [0, 0, 10, 10])], "predictions": []},
    ]
    summary = summarize_detections(records)
    assert summary[N_IMAGES] == 2 and summary["n_ground_truth"] == 3 and summary[N_PREDICTIONS] == 2
    assert summary[MEAN_IOU] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert summary[PRECISION_50] == pytest.approx(1 / 2)
    assert summary[RECALL_50] == pytest.approx(1 / 3)
    assert summary[PARSE_FAILURE_RATE] == pytest.approx(1 / 2)


def test_metrics_json_keeps_its_keys_in_order():
    # The key constants spell metrics.json; earlier runs' files and the README's tables use these names.
    summary = summarize_detections([record([obj("a", [0, 0, 10, 10])], [obj("a", [0, 0, 10, 10], 0.9)])])
    assert list(summary)[:20] == [
        "n_images", "n_ground_truth", "n_predictions", "n_images_without_ground_truth", "n_images_without_predictions",
        "map_50_95", "map_50", "map_75", "ar_100", "mean_iou", "precision_50", "recall_50", "accuracy_50",
        "n_single_object_images", "parse_failure_rate", "n_looping_answers", "n_duplicate_boxes_dropped",
        "n_unknown_label_predictions", "ap_50_per_class", "pr_curve_50",
    ]
    # Keys added later come after them, so older runs' files read the same.
    assert list(summary)[20:] == ["map_small", "map_medium", "map_large", "n_tiles", "n_looping_tiles", "n_tile_parse_failures"]


def test_summary_of_nothing_is_nan_not_a_crash():
    summary = summarize_detections([{"raw_text": "[]", "ground_truth": [], "predictions": []}])
    assert math.isnan(summary[MEAN_IOU]) and summary[PRECISION_50] == 0.0


def test_format_comparison():
    before = {"mean_iou": 0.1, "n_images": 4, "ap_50_per_class": {"cat": 0.0}, "pr_curve_50": {}}
    after = {"mean_iou": 0.55, "n_images": 4, "ap_50_per_class": {"cat": 0.5}, "pr_curve_50": {}}
    assert [line.split() for line in format_comparison(before, after).splitlines()] == [
        ["metric", "baseline", "fine-tuned"],
        ["mean_iou", "0.100", "0.550"],
        ["n_images", "4.000", "4.000"],
        ["ap_50", "cat", "0.000", "0.500"],
    ]


def test_format_comparison_reads_nulls_from_json_as_nan():
    assert format_comparison({"mean_iou": None}, {"mean_iou": None}).splitlines()[1].split() == ["mean_iou", "nan", "nan"]


# ---------------------------------------------------------------- COCO metrics against known answers

BOX = [0, 0, 100, 100]


def test_perfect_predictions_score_one_everywhere():
    records = [record([obj("a", BOX), obj("b", [200, 0, 300, 50])], [obj("a", BOX, 0.9), obj("b", [200, 0, 300, 50], 0.4)]),
               record([obj("a", [10, 10, 60, 90])], [obj("a", [10, 10, 60, 90], 0.7)])]
    metrics = coco_metrics(records, ["a", "b"])
    assert [metrics[k] for k in (MAP_50_95, MAP_50, MAP_75, AR_100)] == pytest.approx([1.0] * 4)
    assert metrics[AP_50_PER_CLASS] == pytest.approx({"a": 1.0, "b": 1.0})
    assert metrics[PR_CURVE_50]["precision"] == pytest.approx([1.0] * 101) and len(metrics[PR_CURVE_50]["recall"]) == 101


def test_shifted_box_scores_by_iou_threshold():
    # IoU 0.72: a match at thresholds 0.50 ... 0.70 (5 of the 10), none from 0.75 up.
    metrics = coco_metrics([record([obj("a", BOX)], [obj("a", [0, 0, 100, 72], 0.9)])], ["a"])
    assert metrics[MAP_50] == pytest.approx(1.0) and metrics[MAP_75] == 0.0
    assert metrics[MAP_50_95] == pytest.approx(0.5)


def test_wrong_class_scores_zero_for_that_class():
    metrics = coco_metrics([record([obj("a", BOX)], [obj("b", BOX, 0.9)])], ["a", "b"])
    assert metrics[AP_50_PER_CLASS]["a"] == 0.0 and math.isnan(metrics[AP_50_PER_CLASS]["b"])  # b has no ground truth
    assert metrics[MAP_50] == 0.0


def test_ranking_by_score_matches_an_independent_ap():
    # Three images with one "a" each; four predictions ranked TP, FP, TP, TP by score.
    far = [500, 500, 600, 600]
    records = [record([obj("a", BOX)], [obj("a", BOX, 0.9), obj("a", far, 0.8)]),
               record([obj("a", BOX)], [obj("a", BOX, 0.7)]),
               record([obj("a", BOX)], [obj("a", BOX, 0.3)])]
    expected = independent_ap([True, False, True, True], 3)
    assert expected == pytest.approx((34 + 67 * 0.75) / 101)
    assert coco_metrics(records, ["a"])[MAP_50] == pytest.approx(expected)
    # Scores matter: the false positive ranked last instead costs nothing.
    records[0]["predictions"][1]["score"] = 0.1
    assert coco_metrics(records, ["a"])[MAP_50] == pytest.approx(independent_ap([True, True, True, False], 3)) == pytest.approx(1.0)


def test_empty_and_unknown_cases_are_counted_not_crashed():
    records = [record([], []), record([obj("a", BOX)], [obj("zebra", BOX, 0.5)]), record([], [obj("a", BOX, 0.5)], raw_text="x")]
    summary = summarize_detections(records, ["a"])
    assert summary["n_unknown_label_predictions"] == 1
    assert summary["n_images_without_ground_truth"] == 2 and summary["n_images_without_predictions"] == 1
    assert summary[MAP_50] == 0.0  # the only "a" prediction is on an image without an "a"
    assert math.isnan(summarize_detections([record([], [])])[MAP_50])  # no ground truth at all
    assert summarize_detections([record([obj("a", BOX)], [], raw_text="[]")])[MAP_50] == 0.0  # nothing predicted


@pytest.mark.parametrize(
    "predictions,correct",
    [([obj("a", BOX, 0.9)], True), ([obj("a", [0, 0, 100, 40], 0.9)], False), ([obj("b", BOX, 0.9)], False),
     ([obj("a", [300, 300, 400, 400], 0.9), obj("a", BOX, 0.5)], False),  # the top-scoring box is judged
     ([obj("a", [300, 300, 400, 400], 0.2), obj("a", BOX, 0.5)], True), ([], False)],
)
def test_grounding_accuracy(predictions, correct):
    accuracy, n = grounding_accuracy([record([obj("a", BOX)], predictions), record([obj("a", BOX), obj("a", BOX)], [])])
    assert n == 1 and accuracy == float(correct)
