"""Box text formats of the Qwen-VL families, shared by training targets, evaluation and inference.

Conventions (``family`` is ``config.model_type``):
- ``qwen2_vl``: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
  with integers in 0..1000 relative to the image side (the Qwen repo's
  ``qwen-vl-finetune/tools/process_bbox.ipynb``, ``convert_to_qwen2vl_format``; QwenLM/Qwen3-VL#1486).
- ``qwen2_5_vl``: JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]`` in absolute pixels of the
  image *after* the processor's ``smart_resize``, i.e. ``image_grid_thw * patch_size``
  (QwenLM/Qwen3-VL#931: scale outputs by original size / model input size).
- ``qwen3_vl``: the same JSON with integers in 0..1000 relative to the image side (Qwen3-VL README:
  "changed from the absolute coordinates used in Qwen2.5-VL to relative coordinates ranging from
  0 to 1000"; QwenLM/Qwen3-VL#1741).
All boxes outside this module are ``bbox_xyxy_px``: ``[x1, y1, x2, y2]`` in original-image pixels.
"""

from __future__ import annotations

import json
import re

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

# Side lengths after resize are multiples of patch_size * spatial_merge_size.
RESIZE_FACTOR = {"qwen2_vl": 28, "qwen2_5_vl": 28, "qwen3_vl": 32}  # 14*2, 14*2, 16*2
RELATIVE_FAMILIES = ("qwen2_vl", "qwen3_vl")  # coordinates in 0..1000 of the image side
NORM_SCALE = 1000

_QWEN2_BOX_RE = re.compile(
    r"<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*"
    r"<\|box_start\|>\s*\(\s*(?P<x1>-?\d+(?:\.\d+)?)\s*,\s*(?P<y1>-?\d+(?:\.\d+)?)\s*\)\s*,\s*"
    r"\(\s*(?P<x2>-?\d+(?:\.\d+)?)\s*,\s*(?P<y2>-?\d+(?:\.\d+)?)\s*\)\s*<\|box_end\|>",
    re.DOTALL,
)
_JSON_OBJECT_RE = re.compile(r"\{[^{}]*\}")  # complete flat objects; a cut-off tail never matches


def _check_family(family: str) -> None:
    """Raise a clear error for a family this module does not know."""
    if family not in RESIZE_FACTOR:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(RESIZE_FACTOR)}")


def resized_size(family: str, width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Size ``(width, height)`` the processor feeds the model, from transformers' ``smart_resize``."""
    _check_family(family)
    resized_h, resized_w = smart_resize(height, width, factor=RESIZE_FACTOR[family], min_pixels=min_pixels, max_pixels=max_pixels)
    return resized_w, resized_h


def _model_scale(family: str, image_size: tuple[int, int], resized: tuple[int, int]) -> tuple[float, float]:
    """Model units per original pixel along x and y."""
    width, height = image_size
    if family in RELATIVE_FAMILIES:
        return NORM_SCALE / width, NORM_SCALE / height
    return resized[0] / width, resized[1] / height


def sort_objects(objects: list[dict]) -> list[dict]:
    """Order objects top-to-bottom, then left-to-right (by y1, then x1), the order answers use."""
    return sorted(objects, key=lambda obj: (obj["bbox_xyxy_px"][1], obj["bbox_xyxy_px"][0]))


def to_model_answer(objects: list[dict], family: str, image_size: tuple[int, int], resized_size: tuple[int, int]) -> str:
    """Write the assistant's target text for ``objects`` (original-image pixel boxes)."""
    _check_family(family)
    sx, sy = _model_scale(family, image_size, resized_size)
    max_x = NORM_SCALE if family in RELATIVE_FAMILIES else resized_size[0]
    max_y = NORM_SCALE if family in RELATIVE_FAMILIES else resized_size[1]
    items = []
    for obj in sort_objects(objects):
        x1, y1, x2, y2 = obj["bbox_xyxy_px"]
        coords = [
            min(max(round(x1 * sx), 0), max_x),
            min(max(round(y1 * sy), 0), max_y),
            min(max(round(x2 * sx), 0), max_x),
            min(max(round(y2 * sy), 0), max_y),
        ]
        items.append((obj["label"], coords))
    if family == "qwen2_vl":
        return "".join(
            f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({c[0]},{c[1]}),({c[2]},{c[3]})<|box_end|>"
            for label, c in items
        )
    return json.dumps([{"bbox_2d": c, "label": label} for label, c in items])


def _raw_boxes(text: str) -> list[tuple[str, list[float]]]:
    """Find ``(label, [x1, y1, x2, y2])`` in either the Qwen2-VL tag syntax or the JSON syntax."""
    found = [
        (m["label"].strip(), [float(m["x1"]), float(m["y1"]), float(m["x2"]), float(m["y2"])]) for m in _QWEN2_BOX_RE.finditer(text)
    ]
    if found:
        return found
    for chunk in _JSON_OBJECT_RE.findall(text):
        try:
            obj = json.loads(chunk)
        except json.JSONDecodeError:
            continue
        bbox = obj.get("bbox_2d", obj.get("bbox"))
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            continue
        found.append((str(obj.get("label", "")).strip(), [float(v) for v in bbox]))
    return found


def parse_model_answer(text: str, family: str, image_size: tuple[int, int], resized_size: tuple[int, int]) -> list[dict]:
    """Read boxes from a model answer into original-image pixels; never raises on bad text."""
    _check_family(family)
    if not isinstance(text, str):
        return []
    width, height = image_size
    sx, sy = _model_scale(family, image_size, resized_size)
    objects = []
    for label, (x1, y1, x2, y2) in _raw_boxes(text):
        x1, x2 = sorted((x1 / sx, x2 / sx))  # swapped corners are normalised
        y1, y2 = sorted((y1 / sy, y2 / sy))
        box = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        objects.append({"label": label, "bbox_xyxy_px": box})
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
