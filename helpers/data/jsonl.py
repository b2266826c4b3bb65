"""JSONL folders: ``<split>.jsonl``, one image per line, ``{"image", "objects": [{"label", "bbox"}], "image_id"?}``."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from helpers.data.records import PendingRecord, SplitOptions, first_records, label_for, load_files, to_xyxy_px
from helpers.data.report import LoadReport
from helpers.families.boxes import is_box_of_numbers

def load_jsonl_split(jsonl_file: Path, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load one JSONL file: ``{"image", "objects": [{"label", "bbox"}], "image_id"?}`` per line."""
    known_classes, bbox_format = options.known_classes, options.bbox_format
    report = LoadReport(str(jsonl_file), options.split, options.strict)
    lines = [(number, line) for number, line in enumerate(jsonl_file.read_text().splitlines(), start=1) if line.strip()]
    lines = first_records(lines, options, report)
    pending, paths = [], []
    for number, line in lines:
        record = f"line {number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            report.problem(record, "malformed_record", f"not valid JSON ({getattr(error, 'msg', 'nested too deeply')})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("objects"), list):
            report.problem(record, "malformed_record", "needs an 'image' path and an 'objects' list")
            continue
        triples = []
        for obj in row["objects"]:
            obj = obj if isinstance(obj, dict) else {}
            # "bbox_xyxy_px" says its own format; "bbox" follows bbox_format.
            triples.append((to_xyxy_px_if_given(obj, bbox_format), label_for(obj.get("label"), None, known_classes), obj.get("label")))
        image_id = str(row.get("image_id", row["image"]))
        pending.append(PendingRecord(f"line {number} ({row['image']!r})", image_id, (row.get("width"), row.get("height")), triples, "xyxy"))
        paths.append(row["image"])
    return load_files(pending, jsonl_file.parent, paths, report, options.loading), report


def to_xyxy_px_if_given(obj: dict, bbox_format: str):
    """A JSONL object's box as xyxy: ``bbox_xyxy_px`` as is, ``bbox`` converted; malformed values pass through."""
    if "bbox_xyxy_px" in obj:
        return obj["bbox_xyxy_px"]
    bbox = obj.get("bbox")
    return to_xyxy_px(bbox, bbox_format) if is_box_of_numbers(bbox) else bbox
