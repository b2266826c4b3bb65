"""Greedy IoU matching and the detection summary, on hand-built cases."""

from __future__ import annotations

import math

import pytest

from helpers.metrics import format_comparison, is_parse_failure, match_boxes, summarize_detections


def obj(label, box):
    return {"label": label, "bbox_xyxy_px": box}


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
         "predictions": [obj("a", [0, 0, 10, 10]), obj("b", [25, 20, 35, 30])]},  # IoU 1 and 50/150
        {"raw_text": "junk", "ground_truth": [obj("a", [0, 0, 10, 10])], "predictions": []},
    ]
    summary = summarize_detections(records)
    assert summary["n_images"] == 2 and summary["n_ground_truth"] == 3 and summary["n_predictions"] == 2
    assert summary["mean_iou"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert summary["precision_50"] == pytest.approx(1 / 2)
    assert summary["recall_50"] == pytest.approx(1 / 3)
    assert summary["parse_failure_rate"] == pytest.approx(1 / 2)


def test_summary_of_nothing_is_nan_not_a_crash():
    summary = summarize_detections([{"raw_text": "[]", "ground_truth": [], "predictions": []}])
    assert math.isnan(summary["mean_iou"]) and summary["precision_50"] == 0.0


def test_format_comparison():
    table = format_comparison({"mean_iou": 0.1, "n_images": 4}, {"mean_iou": 0.55, "n_images": 4})
    assert table.splitlines() == [
        "metric                  baseline  fine-tuned",
        "mean_iou                   0.100       0.550",
        "n_images                   4.000       4.000",
    ]


def test_format_comparison_reads_nulls_from_json_as_nan():
    assert format_comparison({"mean_iou": None}, {"mean_iou": None}).splitlines()[1].split() == ["mean_iou", "nan", "nan"]
