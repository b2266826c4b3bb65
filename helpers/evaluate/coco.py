"""One pycocotools evaluation of a list of records, shared by the COCO metrics and the error analysis.

The records' boxes become COCO ground truth and detections once; ``CocoRun`` keeps the evaluation
together with the way back from COCO's ids to each record's boxes, so the error analysis reads the
very matching COCO's AP is computed from.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers.families.boxes import xyxy_to_xywh


@dataclass
class CocoRun:
    """A COCO evaluation of records: categories, the evaluation (None without ground truth or detections) and id maps."""

    names: list[str]  # category k + 1 is names[k]
    annotations: list[dict]  # COCO ground truth (crowd regions included), id i + 1 at index i
    detections: list[dict]  # COCO detections, id i + 1 at index i
    detection_refs: list[tuple[int, int]] = field(default_factory=list)  # (record index, prediction index) of each detection
    annotation_refs: list[tuple[int, int | None]] = field(default_factory=list)  # (record index, ground-truth index; None for a crowd region)
    n_unknown: int = 0  # predictions whose label is no category (not scored)
    evaluation: COCOeval | None = None

    @property
    def has_ground_truth(self) -> bool:
        """Whether any non-crowd ground truth exists (COCO's AP is defined)."""
        return any(a["iscrowd"] == 0 for a in self.annotations)


def category_names(records: list[dict], class_names: list[str]) -> list[str]:
    """``class_names``, then any ground-truth or crowd label outside them."""
    names = list(dict.fromkeys([*class_names, *sorted({g["label"] for r in records for g in r["ground_truth"]})]))
    return names + sorted({c["label"] for r in records for c in r.get("crowd_regions", [])} - set(names))


def run_coco(records: list[dict], class_names: list[str]) -> CocoRun:
    """Build the COCO ground truth and detections of ``records`` and evaluate them (pycocotools, bbox)."""
    names = category_names(records, class_names)
    category = {name: index + 1 for index, name in enumerate(names)}
    run = CocoRun(names=names, annotations=[], detections=[])
    for record_index, record in enumerate(records):
        image_id = record_index + 1
        regions = [(gt, index, 0) for index, gt in enumerate(record["ground_truth"])]
        regions += [(crowd, None, 1) for crowd in record.get("crowd_regions", [])]
        for gt, index, is_crowd in regions:
            box = xyxy_to_xywh(gt["bbox_xyxy_px"])
            run.annotations.append({"id": len(run.annotations) + 1, "image_id": image_id, "category_id": category[gt["label"]],
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": is_crowd})
            run.annotation_refs.append((record_index, index))
        for pred_index, pred in enumerate(record["predictions"]):
            if pred["label"] not in category:
                run.n_unknown += 1
                continue
            run.detections.append({"image_id": image_id, "category_id": category[pred["label"]], "bbox": xyxy_to_xywh(pred["bbox_xyxy_px"]),
                                   "score": float(pred["score"])})
            run.detection_refs.append((record_index, pred_index))
    if not run.has_ground_truth or not run.detections:
        return run
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ground_truth = COCO()
        ground_truth.dataset = {"images": [{"id": i + 1} for i in range(len(records))], "annotations": run.annotations,
                                "categories": [{"id": i, "name": n} for n, i in category.items()]}
        ground_truth.createIndex()
        run.evaluation = COCOeval(ground_truth, ground_truth.loadRes(run.detections), "bbox")  # detection i gets id i + 1
        run.evaluation.evaluate()
        run.evaluation.accumulate()
        run.evaluation.summarize()
    return run


def matches_at(run: CocoRun, iou_index: int = 0) -> tuple[dict[int, int], set[int]]:
    """COCO's own matching at one IoU threshold (index into ``params.iouThrs``; 0 is 0.5), over all areas.

    Returns ``{detection id: ground-truth id}`` for matched detections and the detection ids COCO ignores
    (matched to a crowd region). Detections beyond ``maxDets`` per image and class are in neither.
    """
    matched: dict[int, int] = {}
    ignored: set[int] = set()
    if run.evaluation is None:
        return matched, ignored
    n_areas, n_images = len(run.evaluation.params.areaRng), len(run.evaluation.params.imgIds)
    for k in range(len(run.evaluation.params.catIds)):
        for i in range(n_images):
            entry = run.evaluation.evalImgs[k * n_areas * n_images + i]  # area range 0: all
            if entry is None:
                continue
            for d, det_id in enumerate(entry["dtIds"]):
                if entry["dtIgnore"][iou_index, d]:
                    ignored.add(det_id)
                elif entry["dtMatches"][iou_index, d]:
                    matched[det_id] = int(entry["dtMatches"][iou_index, d])
    return matched, ignored
