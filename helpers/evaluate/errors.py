"""What the model gets wrong: each box judged from COCO's own matching at IoU 0.5, and per-class figures.

A prediction COCO matched to an object at IoU 0.5 is a true positive. Every other one is a false
positive of exactly one kind, checked in this order (after TIDE, Bolya et al. 2020, with its
"both" error folded into confusion, since the label is wrong):

- ``duplicate``: it covers an object of its own class at IoU >= 0.5 that a higher-scored box already took;
- ``confusion``: it covers another class's object at IoU >= 0.5, or else overlaps one at IoU >= 0.1
  while no object of its own class does (a label outside the classes counts as another class);
- ``localisation``: right class, IoU between 0.1 and 0.5 with an object of that class;
- ``background``: IoU under 0.1 with every object.

An object no prediction matched is ``missed`` (a false negative). A prediction COCO matched to a crowd
region is ``ignored``, as COCO's AP ignores it. Matching goes by score, so lowering the score threshold
never changes how a higher-scored box is judged: precision and recall at any threshold follow from the
kinds and scores alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from helpers.evaluate.coco import CocoRun, matches_at, run_coco
from helpers.families.boxes import box_iou

IOU_MATCH = 0.5  # COCO's AP@.5 threshold, params.iouThrs[0]
IOU_OVERLAP = 0.1  # under this a box touches no object
TRUE_POSITIVE, IGNORED = "true_positive", "ignored"
LOCALISATION, CONFUSION, DUPLICATE, BACKGROUND = "localisation", "confusion", "duplicate", "background"
FALSE_POSITIVE_KINDS = (LOCALISATION, CONFUSION, DUPLICATE, BACKGROUND)
MISSED = "missed"
ERROR_KINDS = (*FALSE_POSITIVE_KINDS, MISSED)
# Keys of the metrics' "errors" and "per_class" entries (metrics.json).
ERRORS, PER_CLASS = "errors", "per_class"
TRUE_POSITIVES, FALSE_POSITIVES, FALSE_NEGATIVES, IGNORED_CROWD = "true_positives", "false_positives", "false_negatives", "ignored_crowd"
AP_50_95, AP_50, PRECISION, RECALL = "ap_50_95", "ap_50", "precision_50", "recall_50"
N_GROUND_TRUTH, N_PREDICTIONS = "n_ground_truth", "n_predictions"


@dataclass
class ImageErrors:
    """One image judged: a kind per prediction, and per ground-truth box the prediction matched to it (or None)."""

    prediction_kinds: list[str]
    matched_prediction: list[int | None]

    def missed(self, scores: list[float], threshold: float = 0.0) -> list[int]:
        """Ground-truth boxes without a match among the predictions scored at least ``threshold``."""
        return [g for g, p in enumerate(self.matched_prediction) if p is None or scores[p] < threshold]

    def for_class(self, record: dict, name: str) -> tuple[dict, ImageErrors]:
        """The record and its judgement narrowed to the boxes labelled ``name`` (each box keeps its kind)."""
        keep = [i for i, p in enumerate(record["predictions"]) if p["label"] == name]
        objects = [g for g, o in enumerate(record["ground_truth"]) if o["label"] == name]
        narrowed = {"predictions": [record["predictions"][i] for i in keep], "ground_truth": [record["ground_truth"][g] for g in objects]}
        matched = [None if self.matched_prediction[g] is None else keep.index(self.matched_prediction[g]) for g in objects]
        return narrowed, ImageErrors([self.prediction_kinds[i] for i in keep], matched)

    def kinds(self, scores: list[float], threshold: float = 0.0) -> set[str]:
        """The error kinds on this image at a score threshold."""
        found = {kind for kind, score in zip(self.prediction_kinds, scores) if score >= threshold and kind in FALSE_POSITIVE_KINDS}
        return found | ({MISSED} if self.missed(scores, threshold) else set())


def false_positive_kind(prediction: dict, ground_truth: list[dict]) -> str:
    """Why an unmatched prediction is wrong (the module docstring's order)."""
    same = max((box_iou(prediction["bbox_xyxy_px"], g["bbox_xyxy_px"]) for g in ground_truth if g["label"] == prediction["label"]), default=0.0)
    other = max((box_iou(prediction["bbox_xyxy_px"], g["bbox_xyxy_px"]) for g in ground_truth if g["label"] != prediction["label"]), default=0.0)
    if same >= IOU_MATCH:
        return DUPLICATE
    if other >= IOU_MATCH:
        return CONFUSION
    if same >= IOU_OVERLAP:
        return LOCALISATION
    return CONFUSION if other >= IOU_OVERLAP else BACKGROUND


def judge_images(records: list[dict], class_names: list[str], run: CocoRun | None = None) -> list[ImageErrors]:
    """Every prediction's kind and every object's match, from COCO's matching at IoU 0.5 (``run``: the records' evaluation, if made)."""
    run = run or run_coco(records, class_names)
    matched, ignored = matches_at(run)
    judged = [ImageErrors([""] * len(r["predictions"]), [None] * len(r["ground_truth"])) for r in records]
    detection_of = {ref: det_index + 1 for det_index, ref in enumerate(run.detection_refs)}
    for record_index, record in enumerate(records):
        image = judged[record_index]
        for pred_index, prediction in enumerate(record["predictions"]):
            det_id = detection_of.get((record_index, pred_index))
            if det_id in ignored:
                image.prediction_kinds[pred_index] = IGNORED
            elif det_id in matched:
                image.prediction_kinds[pred_index] = TRUE_POSITIVE
                _, gt_index = run.annotation_refs[matched[det_id] - 1]
                image.matched_prediction[gt_index] = pred_index
            else:
                image.prediction_kinds[pred_index] = false_positive_kind(prediction, record["ground_truth"])
    return judged


def error_counts(judged: list[ImageErrors]) -> dict:
    """True and false positives (by kind), false negatives and crowd-ignored boxes over all images."""
    kinds = [kind for image in judged for kind in image.prediction_kinds]
    counts = {kind: kinds.count(kind) for kind in FALSE_POSITIVE_KINDS}
    return {TRUE_POSITIVES: kinds.count(TRUE_POSITIVE), FALSE_POSITIVES: sum(counts.values()), **counts,
            FALSE_NEGATIVES: sum(p is None for image in judged for p in image.matched_prediction), IGNORED_CROWD: kinds.count(IGNORED)}


def ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, NaN when nothing was counted."""
    return numerator / denominator if denominator else math.nan


def class_ap(run: CocoRun) -> tuple[dict[str, float], dict[str, float]]:
    """Per class, COCO's AP@[.5:.95] and AP@.5 (NaN for a class without ground truth; 0 when nothing was predicted)."""
    nan = math.nan
    if run.evaluation is None:
        with_gt = {run.names[a["category_id"] - 1] for a in run.annotations if a["iscrowd"] == 0}
        zero = {name: (0.0 if name in with_gt else nan) for name in run.names}
        return zero, dict(zero)
    precision = run.evaluation.eval["precision"][:, :, :, 0, -1]  # [T, R, K] over all areas, 100 detections
    ap_50_95, ap_50 = {}, {}
    for k, name in enumerate(run.names):
        every, first = precision[:, :, k], precision[0, :, k]
        ap_50_95[name] = float(every[every > -1].mean()) if (every > -1).any() else nan
        ap_50[name] = float(first[first > -1].mean()) if (first > -1).any() else nan
    return ap_50_95, ap_50


def per_class_table(records: list[dict], judged: list[ImageErrors], run: CocoRun) -> dict[str, dict]:
    """Per class: AP@[.5:.95], AP@.5, precision and recall at IoU 0.5, and the counts behind them."""
    ap_50_95, ap_50 = class_ap(run)
    table = {}
    for name in run.names:
        pairs = [(p["label"], kind) for r, image in zip(records, judged) for p, kind in zip(r["predictions"], image.prediction_kinds)]
        tp = sum(label == name and kind == TRUE_POSITIVE for label, kind in pairs)
        fp = sum(label == name and kind in FALSE_POSITIVE_KINDS for label, kind in pairs)
        fn = sum(g["label"] == name and match is None for r, image in zip(records, judged)
                 for g, match in zip(r["ground_truth"], image.matched_prediction))
        table[name] = {AP_50_95: ap_50_95[name], AP_50: ap_50[name], PRECISION: ratio(tp, tp + fp), RECALL: ratio(tp, tp + fn),
                       N_GROUND_TRUTH: tp + fn, N_PREDICTIONS: sum(label == name for label, _ in pairs),
                       TRUE_POSITIVES: tp, FALSE_POSITIVES: fp, FALSE_NEGATIVES: fn}
    return table


def error_analysis(records: list[dict], class_names: list[str], run: CocoRun | None = None) -> dict:
    """``{"per_class": ..., "errors": ...}`` for metrics.json, from the records' COCO evaluation (made here unless given)."""
    run = run or run_coco(records, class_names)
    judged = judge_images(records, class_names, run)
    return {PER_CLASS: per_class_table(records, judged, run), ERRORS: error_counts(judged)}


def precision_recall_at(records: list[dict], judged: list[ImageErrors], threshold: float) -> tuple[float, float, int]:
    """Precision and recall at IoU 0.5 counting only predictions scored at least ``threshold``, and how many those are."""
    scored = [(p["score"], kind) for r, image in zip(records, judged) for p, kind in zip(r["predictions"], image.prediction_kinds)
              if kind != IGNORED]
    kept = [kind for score, kind in scored if score >= threshold]
    tp = kept.count(TRUE_POSITIVE)
    n_objects = sum(len(image.matched_prediction) for image in judged)
    return ratio(tp, len(kept)), ratio(tp, n_objects), len(kept)


def worst_images(judged: list[ImageErrors], records: list[dict], kind: str, n: int) -> list[int]:
    """Indexes of up to ``n`` images with the most errors of ``kind``, most first (ties: dataset order)."""
    def count(i: int) -> int:
        image = judged[i]
        return len(image.missed([p["score"] for p in records[i]["predictions"]])) if kind == MISSED else image.prediction_kinds.count(kind)

    counts = np.array([count(i) for i in range(len(judged))])
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in order[:n] if counts[i] > 0]


def format_errors(analyses: dict[str, dict]) -> str:
    """A plain-text table, one column per stage: boxes by kind, then AP@.5, precision and recall per class."""
    stages = list(analyses)
    lines = [f"{'at IoU 0.5':<34}" + "".join(f"{stage:>12}" for stage in stages)]
    for key in (TRUE_POSITIVES, FALSE_POSITIVES, *FALSE_POSITIVE_KINDS, FALSE_NEGATIVES, IGNORED_CROWD):
        label = f"  {key}" if key in FALSE_POSITIVE_KINDS else key
        lines.append(f"{label:<34}" + "".join(f"{analyses[stage][ERRORS][key]:>12d}" for stage in stages))
    for name in analyses[stages[-1]][PER_CLASS]:
        for key in (AP_50, PRECISION, RECALL):
            values = [analyses[stage][PER_CLASS].get(name, {}).get(key, math.nan) for stage in stages]
            lines.append(f"{name[:22] + ' ' + key:<34}" + "".join(f"{value:>12.3f}" for value in values))
    return "\n".join(lines)
