"""Detection metrics over scored, parsed answers.

COCO metrics (mAP@[.5:.95], mAP@.5, mAP@.75, AR@100, AP@[.5:.95] by object size, per-class AP@.5,
the precision-recall curve at IoU 0.5) come from pycocotools, the reference implementation. Alongside: mean IoU of the ground
truth under greedy one-to-one matching within each class (0 for a missed box), precision and
recall at IoU 0.5 under that matching, accuracy at IoU 0.5 on single-object images (grounding),
the parse-failure rate, and the counts of answers stopped for looping and of duplicate boxes
dropped before scoring (what kind of error each box is: ``helpers.evaluate.errors``). Records are ``{"ground_truth": [{"label", "bbox_xyxy_px"}], "predictions":
[{"label", "bbox_xyxy_px", "score"}], "raw_text", "loop_stopped", "duplicates_dropped",
"crowd_regions"?}``. Crowd regions (COCO ``iscrowd=1``) go to pycocotools as the ignore regions they
are in COCO's protocol, so the COCO metrics equal official COCOeval on such data; the matching-based
metrics (mean IoU, precision, recall, accuracy) use the ground truth alone.
"""

from __future__ import annotations

import math

import numpy as np

from helpers.evaluate.coco import CocoRun, run_coco
from helpers.families.boxes import box_iou

# Keys of ``summarize_detections`` (metrics.json) that other code reads, each spelled once here.
MAP_50_95 = "map_50_95"  # COCO mAP@[.5:.95]
MAP_50 = "map_50"
MAP_75 = "map_75"
AR_100 = "ar_100"  # COCO average recall, at most 100 detections per image
# COCO's AP@[.5:.95] by ground-truth area in original-image pixels: small under 32x32, medium up to 96x96, large above.
MAP_SMALL, MAP_MEDIUM, MAP_LARGE = "map_small", "map_medium", "map_large"
MEAN_IOU = "mean_iou"
PRECISION_50 = "precision_50"
RECALL_50 = "recall_50"
ACCURACY_50 = "accuracy_50"  # grounding: the top box of a single-object image at IoU >= 0.5
PARSE_FAILURE_RATE = "parse_failure_rate"
N_IMAGES = "n_images"
N_PREDICTIONS = "n_predictions"
N_GROUND_TRUTH = "n_ground_truth"
N_IMAGES_WITHOUT_GROUND_TRUTH = "n_images_without_ground_truth"
N_IMAGES_WITHOUT_PREDICTIONS = "n_images_without_predictions"
N_SINGLE_OBJECT_IMAGES = "n_single_object_images"
N_UNKNOWN_LABEL_PREDICTIONS = "n_unknown_label_predictions"
N_LOOPING_ANSWERS = "n_looping_answers"
N_DUPLICATE_BOXES_DROPPED = "n_duplicate_boxes_dropped"
# Sliced inference (helpers.evaluate.slicing): tiles answered, stopped for looping, and unreadable; 0 for whole images.
N_TILES, N_LOOPING_TILES, N_TILE_PARSE_FAILURES = "n_tiles", "n_looping_tiles", "n_tile_parse_failures"
AP_50_PER_CLASS = "ap_50_per_class"
PR_CURVE_50 = "pr_curve_50"
# The Trainer prefixes what it logs at an evaluation with "eval_" (metric_key_prefix); IoUEvalCallback follows it.
EVAL_MEAN_IOU = f"eval_{MEAN_IOU}"
EVAL_PARSE_FAILURE_RATE = f"eval_{PARSE_FAILURE_RATE}"
# Keys of the trainer's log records: its own, and the clipped gradient norm helpers.train.callbacks adds.
LOSS, EVAL_LOSS, LEARNING_RATE, TRAIN_RUNTIME = "loss", "eval_loss", "learning_rate", "train_runtime"
GRAD_NORM = "grad_norm"  # the trainer's, before clipping
GRAD_NORM_CLIPPED = "grad_norm_clipped"  # after clipping to max_grad_norm: what the optimizer applies


# COCOeval's area ranges (Params.areaRng) for small, medium and large, in square pixels.
SIZE_RANGES_PX2 = ((0, 32**2), (32**2, 96**2), (96**2, 1e10))


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


def coco_metrics(records: list[dict], class_names: list[str], run: CocoRun | None = None) -> dict:
    """COCO AP and AR with pycocotools, per-class AP@.5 and the precision-recall curve at IoU 0.5.

    Categories are ``class_names`` plus any ground-truth label outside them; a predicted label
    outside them cannot be scored and is counted in ``n_unknown_label_predictions`` instead.
    Values are NaN when there is no ground truth; 0 when nothing was predicted. ``run``: the
    records' evaluation when already made (``helpers.evaluate.coco.run_coco``).
    """
    run = run or run_coco(records, class_names)
    names, annotations = run.names, run.annotations
    nan = math.nan
    result = {MAP_50_95: nan, MAP_50: nan, MAP_75: nan, AR_100: nan, MAP_SMALL: nan, MAP_MEDIUM: nan, MAP_LARGE: nan, AP_50_PER_CLASS: dict.fromkeys(names, nan),
              PR_CURVE_50: {"recall": [], "precision": []}, N_UNKNOWN_LABEL_PREDICTIONS: run.n_unknown}
    if not run.has_ground_truth:
        return result
    if run.evaluation is None:  # ground truth, no detections
        with_gt = {names[a["category_id"] - 1] for a in annotations if a["iscrowd"] == 0}
        sizes = {size for size, (low, high) in zip((MAP_SMALL, MAP_MEDIUM, MAP_LARGE), SIZE_RANGES_PX2)
                 if any(low <= a["area"] <= high for a in annotations if a["iscrowd"] == 0)}
        return result | dict.fromkeys(sizes, 0.0) | {MAP_50_95: 0.0, MAP_50: 0.0, MAP_75: 0.0, AR_100: 0.0,
                         AP_50_PER_CLASS: {name: (0.0 if name in with_gt else nan) for name in names}}
    evaluation = run.evaluation
    stats = [nan if v < 0 else float(v) for v in evaluation.stats]
    # precision[T, R, K, A, M]: IoU threshold, recall point, category, area range ("all"), max detections (100)
    precision = evaluation.eval["precision"][0, :, :, 0, -1]
    per_class = {name: float(precision[:, k][precision[:, k] > -1].mean()) if (precision[:, k] > -1).any() else nan
                 for k, name in enumerate(names)}
    scored = precision[:, (precision > -1).all(axis=0)]  # classes with ground truth
    curve = scored.mean(axis=1) if scored.size else np.zeros(0)
    return result | {MAP_50_95: stats[0], MAP_50: stats[1], MAP_75: stats[2], AR_100: stats[8],
                     MAP_SMALL: stats[3], MAP_MEDIUM: stats[4], MAP_LARGE: stats[5],
                     AP_50_PER_CLASS: per_class,
                     PR_CURVE_50: {"recall": [float(r) for r in evaluation.params.recThrs][: len(curve)],
                                   "precision": [float(p) for p in curve]}}


def grounding_accuracy(records: list[dict], iou_threshold: float = 0.5) -> tuple[float, int]:
    """Share of single-object images whose highest-scoring box has the right label and IoU >= threshold."""
    single = [r for r in records if len(r["ground_truth"]) == 1]
    correct = 0
    for record in single:
        if record["predictions"]:
            best = max(record["predictions"], key=lambda p: p["score"])
            truth = record["ground_truth"][0]
            correct += best["label"] == truth["label"] and box_iou(best["bbox_xyxy_px"], truth["bbox_xyxy_px"]) >= iou_threshold
    return (correct / len(single) if single else math.nan), len(single)


def summarize_detections(records: list[dict], class_names: list[str] | None = None, iou_threshold: float = 0.5) -> dict:
    """Every metric of the run (see the module docstring) for a list of evaluated images."""
    if class_names is None:
        class_names = sorted({g["label"] for r in records for g in r["ground_truth"]})
    n_gt = sum(len(r["ground_truth"]) for r in records)
    n_pred = sum(len(r["predictions"]) for r in records)
    iou_sum = 0.0
    true_positives = 0
    for record in records:
        for _gi, _pi, iou in match_boxes(record["ground_truth"], record["predictions"]):
            iou_sum += iou
            true_positives += iou >= iou_threshold
    failures = sum(is_parse_failure(r["raw_text"], r["predictions"]) for r in records)
    accuracy, n_single = grounding_accuracy(records, iou_threshold)
    coco = coco_metrics(records, class_names)
    return {
        N_IMAGES: len(records),
        N_GROUND_TRUTH: n_gt,
        N_PREDICTIONS: n_pred,
        N_IMAGES_WITHOUT_GROUND_TRUTH: sum(not r["ground_truth"] for r in records),
        N_IMAGES_WITHOUT_PREDICTIONS: sum(not r["predictions"] for r in records),
        MAP_50_95: coco[MAP_50_95],
        MAP_50: coco[MAP_50],
        MAP_75: coco[MAP_75],
        AR_100: coco[AR_100],
        MEAN_IOU: iou_sum / n_gt if n_gt else math.nan,
        PRECISION_50: true_positives / n_pred if n_pred else 0.0,
        RECALL_50: true_positives / n_gt if n_gt else math.nan,
        ACCURACY_50: accuracy,
        N_SINGLE_OBJECT_IMAGES: n_single,
        PARSE_FAILURE_RATE: failures / len(records) if records else math.nan,
        N_LOOPING_ANSWERS: sum(bool(r.get("loop_stopped")) for r in records),
        N_DUPLICATE_BOXES_DROPPED: sum(r.get("duplicates_dropped", 0) for r in records),
        N_UNKNOWN_LABEL_PREDICTIONS: coco[N_UNKNOWN_LABEL_PREDICTIONS],
        AP_50_PER_CLASS: coco[AP_50_PER_CLASS],
        PR_CURVE_50: coco[PR_CURVE_50],
        MAP_SMALL: coco[MAP_SMALL],
        MAP_MEDIUM: coco[MAP_MEDIUM],
        MAP_LARGE: coco[MAP_LARGE],
        N_TILES: sum(r.get("tiles", 0) for r in records),
        N_LOOPING_TILES: sum(r.get("tiles_loop_stopped", 0) for r in records),
        N_TILE_PARSE_FAILURES: sum(r.get("tile_parse_failures", 0) for r in records),
    }


def format_stages(stages: dict[str, dict]) -> str:
    """A plain-text table of the scalar metrics, one column per stage (``{"baseline": ..., "fine-tuned": ...}``), then AP@.5 per class."""
    names, last = list(stages), list(stages.values())[-1]
    lines = [f"{'metric':<30}" + "".join(f"{name:>12}" for name in names)]

    def row(label: str, values) -> str:
        values = [math.nan if v is None else v for v in values]  # metrics.json stores NaN as null
        return f"{label:<30}" + "".join(f"{v:>12.3f}" for v in values)

    for key, value in last.items():
        if isinstance(value, (int, float)) or value is None:
            lines.append(row(key, [metrics.get(key) for metrics in stages.values()]))
    for name in last.get(AP_50_PER_CLASS, {}):
        lines.append(row(f"ap_50 {name}", [metrics.get(AP_50_PER_CLASS, {}).get(name) for metrics in stages.values()]))
    return "\n".join(lines)


def format_comparison(before: dict, after: dict) -> str:
    """A plain-text baseline/fine-tuned table of the scalar metrics, then AP@.5 per class."""
    return format_stages({"baseline": before, "fine-tuned": after})
