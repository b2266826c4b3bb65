"""Detection metrics over parsed answers: greedy IoU matching within each class."""

from __future__ import annotations

import math

from helpers.boxes import box_iou


def match_boxes(ground_truth: list[dict], predictions: list[dict]) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of same-label boxes, highest IoU first: ``(gt_idx, pred_idx, iou)``."""
    candidates = [
        (box_iou(gt["bbox_xyxy_px"], pred["bbox_xyxy_px"]), gi, pi)
        for gi, gt in enumerate(ground_truth)
        for pi, pred in enumerate(predictions)
        if gt["label"] == pred["label"]
    ]
    used_gt: set[int] = set()
    used_pred: set[int] = set()
    matches = []
    for iou, gi, pi in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
        if iou <= 0 or gi in used_gt or pi in used_pred:
            continue
        used_gt.add(gi)
        used_pred.add(pi)
        matches.append((gi, pi, iou))
    return matches


def is_parse_failure(raw_text: str, predictions: list[dict]) -> bool:
    """An answer that yields no box although it is not an explicit empty answer."""
    stripped = raw_text.strip().strip("`").removeprefix("json").strip()
    return not predictions and stripped not in ("", "[]")


def summarize_detections(records: list[dict], iou_threshold: float = 0.5) -> dict:
    """Mean IoU over ground-truth boxes (0 when unmatched), precision/recall at ``iou_threshold``."""
    n_gt = sum(len(r["ground_truth"]) for r in records)
    n_pred = sum(len(r["predictions"]) for r in records)
    iou_sum = 0.0
    true_positives = 0
    for record in records:
        for _gi, _pi, iou in match_boxes(record["ground_truth"], record["predictions"]):
            iou_sum += iou
            true_positives += iou >= iou_threshold
    failures = sum(is_parse_failure(r["raw_text"], r["predictions"]) for r in records)
    return {
        "n_images": len(records),
        "n_ground_truth": n_gt,
        "n_predictions": n_pred,
        "mean_iou": iou_sum / n_gt if n_gt else math.nan,
        "precision_50": true_positives / n_pred if n_pred else 0.0,
        "recall_50": true_positives / n_gt if n_gt else math.nan,
        "parse_failure_rate": failures / len(records) if records else math.nan,
    }


def format_comparison(before: dict, after: dict) -> str:
    """A plain-text baseline/fine-tuned table of two metric dicts (keys of ``after``, in its order)."""
    lines = [f"{'metric':<20}{'baseline':>12}{'fine-tuned':>12}"]
    for key, value in after.items():
        # metrics.json stores NaN (no ground truth, say) as null
        old, new = (math.nan if v is None else v for v in (before.get(key), value))
        lines.append(f"{key:<20}{old:>12.3f}{new:>12.3f}")
    return "\n".join(lines)
