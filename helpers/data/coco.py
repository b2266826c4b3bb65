"""COCO folders: one annotation file per split (COCO 2017's layout, or Roboflow's COCO export); boxes are always ``xywh``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from datasets import Dataset

from helpers.families.labels import normalize_label
from helpers.data.records import PendingRecord, SplitOptions, first_records, label_for, load_files
from helpers.data.report import DataError, LoadReport, short

COCO_LAYOUTS = ("{split}/annotations.json", "{split}/_annotations.coco.json", "annotations/instances_{split}.json")


def find_coco_annotations(source: Path, split: str) -> tuple[Path, Path] | None:
    """``(annotation file, image folder)`` of a split in one of ``COCO_LAYOUTS``, or None."""
    for layout in COCO_LAYOUTS:
        candidate = source / layout.format(split=split)
        if candidate.is_file():
            return candidate, source / split
    return None


def is_id(value) -> bool:
    """True for a usable COCO id: an integer (not a boolean) or a string."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco_file(annotation_file: Path) -> dict:
    """The parsed annotation file, or a ``DataError`` naming the file and what is wrong with it."""
    try:
        coco = json.loads(annotation_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{annotation_file}: not a readable COCO JSON file ({error})") from error
    except RecursionError as error:
        raise DataError(f"{annotation_file}: nested too deeply to be a COCO file") from error
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise DataError(f"{annotation_file}: a COCO file needs 'images' and 'annotations' lists")
    if not isinstance(coco.get("categories", []), list):
        raise DataError(f"{annotation_file}: 'categories' must be a list of {{'id', 'name'}} objects")
    return coco


def coco_categories(entries: list, report: LoadReport) -> dict:
    """``{category id: normalised name}``; malformed entries are counted and skipped."""
    categories = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not is_id(entry.get("id")) or not isinstance(entry.get("name"), str):
            report.problem(f"category {index}", "malformed_category", f"{short(entry)} needs a number id and a string name")
            continue
        categories[entry["id"]] = normalize_label(entry["name"])
    return categories


def coco_image_entries(entries: list, report: LoadReport) -> tuple[list[dict], set]:
    """Image entries with a usable, unique id and a file name, in file order, and the ids that several entries share; the others counted."""
    usable = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not is_id(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            name = f"image id {short(entry.get('id'))} ({short(entry.get('file_name'))})" if isinstance(entry, dict) else f"image entry {index}"
            report.problem(name, "malformed_record", "the image entry needs a number or string id and a file_name")
            continue
        usable.append(entry)
    counts = Counter(entry["id"] for entry in usable)
    for entry in usable:
        if counts[entry["id"]] > 1:
            report.problem(f"image id {entry['id']!r} ({entry['file_name']!r})", "duplicate_image_id",
                           f"{counts[entry['id']]} image entries share this id, so its boxes cannot be placed")
    return [entry for entry in usable if counts[entry["id"]] == 1], {image_id for image_id, n in counts.items() if n > 1}


def coco_annotations_by_image(entries: list, image_ids: set, report: LoadReport) -> dict:
    """Annotations grouped by image id; malformed and orphan ones counted and skipped."""
    by_image: dict = {}
    for index, ann in enumerate(entries):
        if not isinstance(ann, dict) or not is_id(ann.get("image_id")) or ann.get("iscrowd", 0) not in (0, 1):
            report.problem(f"annotation {index}", "malformed_annotation", f"{short(ann)} needs an image_id and iscrowd 0 or 1")
            continue
        if ann["image_id"] not in image_ids:
            report.problem(f"annotation {index}", "orphan_annotation", f"image_id {ann['image_id']!r} is not in 'images'")
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    return by_image


def load_coco_split(annotation_file: Path, image_dir: Path, options: SplitOptions = SplitOptions()) -> tuple[Dataset, LoadReport]:
    """Load a COCO annotation file (``images``, ``annotations``, ``categories``; boxes ``xywh``)."""
    known_classes = options.known_classes
    coco = read_coco_file(annotation_file)
    report = LoadReport(str(annotation_file), options.split, options.strict)
    categories = coco_categories(coco.get("categories", []), report)
    images, shared_ids = coco_image_entries(coco["images"], report)
    # The annotations of a shared id go with its skipped images: they are not orphans.
    by_image = coco_annotations_by_image(coco["annotations"], {entry["id"] for entry in images} | shared_ids, report)
    images = first_records(images, options, report)
    pending = []
    for entry in images:
        objects, crowds = [], []
        for ann in by_image.get(entry["id"], []):
            category = ann.get("category_id")
            label = label_for(categories.get(category) if is_id(category) else None, None, known_classes)  # already normalised
            (crowds if ann.get("iscrowd") == 1 else objects).append((ann.get("bbox"), label, category))
        record = f"image id {entry['id']!r} ({entry['file_name']!r})"
        pending.append(PendingRecord(record, str(entry["id"]), (entry.get("width"), entry.get("height")), objects, "xywh", crowds))
    return load_files(pending, image_dir, [entry["file_name"] for entry in images], report, options.loading), report
