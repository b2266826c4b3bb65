"""Box text formats of the Qwen-VL families, shared by training targets, evaluation and inference.

Each family's convention (answer syntax and coordinate frame, with their sources) is in its record in
``helpers.families.registry``. All boxes outside this module are ``bbox_xyxy_px``: ``[x1, y1, x2, y2]`` in
original-image pixels.
"""

from __future__ import annotations

import json
import math

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from helpers.families.answer_reader import read_dicts, read_tag_boxes
from helpers.families.registry import TAGS, Family
from helpers.families.labels import normalize_label

NORM_SCALE = 1000  # relative coordinates run from 0 to 1000 of the image side

JSON_BOX_KEYS = ("bbox_2d", "bbox")  # not Gemini's "box_2d", which is [y1, x1, y2, x2]: ambiguous
# Qwen2.5-VL's text spotting answers name each box by its text (Qwen2.5-VL blog, its OCR grounding cases).
JSON_LABEL_KEYS = ("label", "text_content")


def xywh_to_xyxy(xywh: list[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` from COCO's ``[x, y, width, height]``, in the same frame."""
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def xyxy_to_xywh(xyxy: list[float]) -> list[float]:
    """COCO's ``[x, y, width, height]`` from ``[x1, y1, x2, y2]``, in the same frame."""
    x1, y1, x2, y2 = xyxy
    return [x1, y1, x2 - x1, y2 - y1]


def clip_xyxy(xyxy: list[float], width: float, height: float) -> list[float]:
    """The box with its x clamped to ``[0, width]`` and its y to ``[0, height]``."""
    x1, y1, x2, y2 = xyxy
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def resized_size(family: Family, width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Size ``(width, height)`` the processor feeds the model, from transformers' ``smart_resize``."""
    factor = family.resize_factor
    resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return resized_w, resized_h


def visual_token_count(family: Family, width: int, height: int, min_pixels: int, max_pixels: int) -> int:
    """Vision tokens the language model gets for one image: one per merged group of patches."""
    resized_w, resized_h = resized_size(family, width, height, min_pixels, max_pixels)
    factor = family.resize_factor
    return (resized_w // factor) * (resized_h // factor)


def _model_scale(family: Family, image_size: tuple[int, int], resized: tuple[int, int]) -> tuple[float, float]:
    """Model units per original pixel along x and y."""
    width, height = image_size
    if family.relative:
        return NORM_SCALE / width, NORM_SCALE / height
    return resized[0] / width, resized[1] / height


def sort_objects(objects: list[dict]) -> list[dict]:
    """Order objects by label, then top-to-bottom, then left-to-right (label, y1, x1): the order answers use."""
    # Grouped by label, each next item is "the next shape of this class, or the first of the next
    # class present": a lookup by appearance, like grounding. In reading order alone the model must
    # compare positions to find the next object, and learns far less (README, Does it learn?).
    return sorted(objects, key=lambda obj: (obj["label"], obj["bbox_xyxy_px"][1], obj["bbox_xyxy_px"][0]))


def to_model_answer(objects: list[dict], family: Family, image_size: tuple[int, int], resized_size: tuple[int, int]) -> str:
    """Write the assistant's target text for ``objects`` (original-image pixel boxes)."""
    relative = family.relative
    sx, sy = _model_scale(family, image_size, resized_size)
    max_x = NORM_SCALE if relative else resized_size[0]
    max_y = NORM_SCALE if relative else resized_size[1]
    items = []
    for obj in sort_objects(objects):
        x1, y1, x2, y2 = obj["bbox_xyxy_px"]
        coords = [int(v) for v in clip_xyxy([round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)], max_x, max_y)]
        items.append((obj["label"], coords))
    if family.answer_syntax == TAGS:
        return "".join(
            f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({c[0]},{c[1]}),({c[2]},{c[3]})<|box_end|>"
            for label, c in items
        )
    return json.dumps([{"bbox_2d": c, "label": label} for label, c in items], ensure_ascii=False)


def is_box_of_numbers(values) -> bool:
    """True for a list or tuple of 4 finite numbers (JSON allows NaN and Infinity; booleans are not numbers)."""
    return (
        isinstance(values, (list, tuple))
        and len(values) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def _json_boxes(text: str) -> list[tuple[str, list[float], tuple[int, int]]]:
    """``(label, [x1, y1, x2, y2], text span)`` from every closed object with a box key, in order."""
    found = []
    for obj, span in sorted(read_dicts(text, JSON_BOX_KEYS), key=lambda item: item[1]):
        bbox = next(obj[key] for key in JSON_BOX_KEYS if key in obj)
        if is_box_of_numbers(bbox):
            label = next((obj[key] for key in JSON_LABEL_KEYS if isinstance(obj.get(key), str)), "")
            found.append((label, [float(v) for v in bbox], span))
    return found


def object_spans(text: str) -> list[tuple[int, int]]:
    """Where each box object of an answer lies (JSON objects with a box key, then tag boxes), as ``(start, end)`` characters."""
    return [span for _obj, span in read_dicts(text, JSON_BOX_KEYS)] + [span for _label, _box, span in read_tag_boxes(text)]


def object_texts(text: str) -> list[str]:
    """The text of every box object in an answer, whitespace removed (so a repeat counts whatever its spacing)."""
    return ["".join(text[start:end].split()) for start, end in object_spans(text)]


def parse_model_answer(text: str, family: Family, image_size: tuple[int, int], resized_size: tuple[int, int]) -> list[dict]:
    """Read boxes from a model answer into original-image pixels; never raises on bad text.

    See ``parse_model_answer_with_spans`` for the rules.
    """
    return [obj for obj, _span in parse_model_answer_with_spans(text, family, image_size, resized_size)]


def parse_model_answer_with_spans(
    text: str, family: Family, image_size: tuple[int, int], resized_size: tuple[int, int]
) -> list[tuple[dict, tuple[int, int]]]:
    """Boxes in original-image pixels, each with the ``(start, end)`` characters of its object in ``text``.

    Accepted, from any family and anywhere in the text (``helpers.families.answer_reader`` has the syntax rules):
    - Qwen2-VL's tags, always read in their own 0..1000 frame; when the answer holds any complete tag box,
      only tag boxes are read;
    - otherwise every closed object with a ``bbox_2d`` or ``bbox`` key holding 4 finite numbers, in strict
      or tolerant JSON or a Python literal, nested anywhere, read in the family's frame (Qwen2.5-VL: resized
      pixels, others: 0..1000), since the JSON text alone does not say which. Its label is the string under
      ``label`` (or, for text spotting, ``text_content``), else ``""``; other keys (``point_2d``,
      attributes) are ignored.
    Swapped corners are put in order and boxes are clipped to the image. Never raises on any text, and
    runs in time linear in its length.
    """
    if not isinstance(text, str):
        return []
    width, height = image_size
    tagged = [box for box in read_tag_boxes(text) if all(math.isfinite(v) for v in box[1])]
    if tagged:
        sx, sy = NORM_SCALE / width, NORM_SCALE / height
        raw = tagged
    else:
        sx, sy = _model_scale(family, image_size, resized_size)
        raw = _json_boxes(text)
    objects = []
    for label, (x1, y1, x2, y2), span in raw:
        x1, x2 = min(x1, x2) / sx, max(x1, x2) / sx  # swapped corners are normalised
        y1, y2 = min(y1, y2) / sy, max(y1, y2) / sy
        box = clip_xyxy([x1, y1, x2, y2], width, height)
        objects.append(({"label": normalize_label(label), "bbox_xyxy_px": box}, span))  # the loaders' label rule
    return objects


def box_iou(a_xyxy: list[float], b_xyxy: list[float]) -> float:
    """Intersection over union of two xyxy boxes in the same frame (0 when either is empty)."""
    ix = max(0.0, min(a_xyxy[2], b_xyxy[2]) - max(a_xyxy[0], b_xyxy[0]))
    iy = max(0.0, min(a_xyxy[3], b_xyxy[3]) - max(a_xyxy[1], b_xyxy[1]))
    inter = ix * iy
    area_a = max(0.0, a_xyxy[2] - a_xyxy[0]) * max(0.0, a_xyxy[3] - a_xyxy[1])
    area_b = max(0.0, b_xyxy[2] - b_xyxy[0]) * max(0.0, b_xyxy[3] - b_xyxy[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def drop_duplicate_boxes(predictions: list[dict], iou_threshold: float) -> tuple[list[dict], int]:
    """Drop every box of a label overlapping a higher-scored box of that label by ``iou_threshold`` or more (0: keep all).

    Identical boxes are duplicates whatever their area. Returns the kept boxes in their order and how many were dropped.
    """
    if iou_threshold <= 0:
        return list(predictions), 0
    kept: list[int] = []
    by_score = sorted(range(len(predictions)), key=lambda i: -predictions[i].get("score", 1.0))
    for i in by_score:
        box, label = predictions[i]["bbox_xyxy_px"], predictions[i]["label"]
        if not any(
            predictions[k]["label"] == label and (predictions[k]["bbox_xyxy_px"] == box or box_iou(predictions[k]["bbox_xyxy_px"], box) >= iou_threshold)
            for k in kept
        ):
            kept.append(i)
    return [predictions[i] for i in sorted(kept)], len(predictions) - len(kept)
