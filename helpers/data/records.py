"""The rules every loader shares: box cleaning, confined image paths, image checks (and the cache), labels, the schema rows.

A source module (``hub``, ``coco``, ``jsonl``) reads its annotations into ``PendingRecord``s; what
happens next is the same for all of them, here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from datasets import Dataset, concatenate_datasets

from helpers.data.images import ImageCache, NotARegularFile, PreparedImage, prepare_images
from helpers.families.labels import LABEL_PROBLEMS, label_problem, normalize_label
from helpers.data.report import PROBLEMS, LoadReport, short
from helpers.data.schema import DETECTION_FEATURES
from helpers.families.boxes import clip_xyxy, is_box_of_numbers, xywh_to_xyxy

BBOX_FORMATS = ("xywh", "xyxy")  # pixel boxes: xywh = COCO [x, y, width, height]; xyxy = [x1, y1, x2, y2]
CLIP_TOLERANCE_PX = 1.0  # overshoot up to this is float noise of the annotation tool: clipped, not reported
CHUNK_RECORDS = 256  # records encoded into Arrow at a time
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # threads that read, check and cache images


@dataclass(frozen=True)
class ImageLoading:
    """How loaders treat images: the optional downscaled cache and the threads that read them."""

    cache: ImageCache | None = None
    workers: int = DEFAULT_WORKERS


@dataclass(frozen=True)
class SplitOptions:
    """What every loader takes besides its source: the split's name, a cap on images, the box format, the accepted labels, strictness, image handling."""

    split: str = ""  # the source's split name, named in the report and its messages
    max_images: int | None = None  # the first N records (None: all)
    bbox_format: str = "xywh"  # hub and JSONL pixel boxes: one of BBOX_FORMATS (COCO files are always xywh)
    known_classes: frozenset[str] | None = None  # normalised labels accepted (None: all)
    strict: bool = False  # the first problem raises a DataError
    loading: ImageLoading = ImageLoading()

    def __post_init__(self):
        if self.bbox_format not in BBOX_FORMATS:
            raise ValueError(f"unknown bbox_format {self.bbox_format!r}; expected one of {BBOX_FORMATS}")


def cap_note(kept: int, available: int) -> str:
    """What the report says of a split its size parameter caps."""
    return f"{kept} of {available} images loaded: the split's *_size parameter caps it (0 loads all)"


def first_records(items: list, options: SplitOptions, report: LoadReport) -> list:
    """The first ``max_images`` items; a cap that leaves some out is said in the report ("10 of 28 images loaded")."""
    if options.max_images is None or len(items) <= options.max_images:
        return items
    report.notes.append(cap_note(options.max_images, len(items)))
    return items[: options.max_images]


def cxcywh_norm_to_xyxy_px(bbox: list[float], width: int, height: int) -> list[float]:
    """YOLO's box, centre and size as fractions of the upright image, in that image's pixels."""
    cx, cy, w, h = (float(v) for v in bbox)
    return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]


def voc_to_xyxy_px(bbox: list[float], width: int, height: int) -> list[float]:
    """Pascal VOC's corners, 1-based pixel indices with both ends inside the box, as continuous pixel corners.

    The VOC devkit numbers pixels from 1 and includes ``xmax``: (1, 1, W, H) is the whole image, which is
    (0, 0, W, H) here, so only the first corner moves (detectron2's ``pascal_voc`` loader reads it the same way).
    """
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return [x1 - 1, y1 - 1, x2, y2]


# Every box frame a loader reads, to [x1, y1, x2, y2] pixels of the upright image: the two a user names
# (BBOX_FORMATS), and the ones a file format fixes.
BOX_FRAMES = {
    "xywh": lambda bbox, width, height: xywh_to_xyxy(bbox),
    "xyxy": lambda bbox, width, height: [float(v) for v in bbox],
    "cxcywh_norm": cxcywh_norm_to_xyxy_px,
    "voc": voc_to_xyxy_px,
}


# The names a folder may give the validation split: Ultralytics writes "val", Roboflow "valid", the hub "validation".
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation"), "validation": ("validation", "val", "valid")}


def split_candidates(split: str) -> tuple[str, ...]:
    """The folder names a split may have, the requested one first."""
    return SPLIT_ALIASES.get(split, (split,))


def to_xyxy_px(bbox: list[float], bbox_format: str, width: int = 0, height: int = 0) -> list[float]:
    """Convert one box from ``bbox_format`` (a key of ``BOX_FRAMES``) to ``[x1, y1, x2, y2]`` pixels of a ``width`` x ``height`` image."""
    if bbox_format not in BOX_FRAMES:
        raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")
    return BOX_FRAMES[bbox_format](bbox, width, height)


def clean_box(bbox_xyxy_px: list[float], width: int, height: int) -> tuple[list[float] | None, str]:
    """Apply the box rules; return ``(box, "ok" | "clipped_box")`` or ``(None, kind)`` to skip it."""
    x1, y1, x2, y2 = (float(v) for v in bbox_xyxy_px)
    if x2 < x1 or y2 < y1:
        return None, "inverted_box"
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return None, "outside_box"
    clipped = clip_xyxy([x1, y1, x2, y2], width, height)
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return None, "degenerate_box"
    overshoot = max(abs(a - b) for a, b in zip(clipped, (x1, y1, x2, y2)))
    return clipped, ("ok" if overshoot <= CLIP_TOLERANCE_PX else "clipped_box")


def clean_objects(
    raw_objects: list[tuple[object, str | None, object]],
    width: int,
    height: int,
    bbox_format: str,
    record: str,
    report: LoadReport,
    crowds: bool = False,
) -> list[dict]:
    """Turn ``(bbox, label or None if unknown, category as written)`` triples into schema objects (``crowds``: COCO crowd regions)."""
    objects = []
    for index, (bbox, label, category) in enumerate(raw_objects):
        where = f"{record} {'crowd region' if crowds else 'box'} {index}"
        if not is_box_of_numbers(bbox):
            report.problem(where, "malformed_box", f"bbox {short(bbox)} is not 4 finite numbers")
            continue
        if label is None:
            report.problem(where, "unknown_category", f"category {short(category)} is not one of the dataset's classes")
            continue
        bad_label = label_problem(label)
        if bad_label is not None:
            report.problem(where, bad_label, f"label {short(label)} {LABEL_PROBLEMS[bad_label]}")
            continue
        box, status = clean_box(to_xyxy_px(bbox, bbox_format, width, height), width, height)
        if box is None:
            report.problem(where, status, f"bbox {list(bbox)} ({bbox_format}) on a {width}x{height}px image")
            continue
        if status == "clipped_box":
            report.problem(where, status, f"bbox {list(bbox)} ({bbox_format}) clipped to {box} on a {width}x{height}px image")
        objects.append({"label": label, "bbox_xyxy_px": box})
    report.counts["crowd_regions_kept" if crowds else "boxes_kept"] += len(objects)
    return objects


@dataclass
class PendingRecord:
    """A record read from the annotations whose image is not checked yet."""

    record: str  # how messages name it
    image_id: str
    declared_size: tuple | None
    objects: list[tuple]  # (bbox, label or None, category as written)
    bbox_format: str
    crowds: list[tuple] = field(default_factory=list)
    row: int = -1  # the source row (hub datasets)
    size_problem: str = "size_mismatch"  # the PROBLEMS kind of a declared size the image does not have


def confined_path(root: Path, relative: object) -> Path | None:
    """``root / relative`` when it stays inside ``root`` written as it is (no '..' out, no absolute path), else None."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or os.path.isabs(relative):
        return None
    joined = os.path.normpath(os.path.join(root, relative))
    # Lexical, not resolved: a symbolic link the user placed inside the folder is theirs to follow.
    return Path(joined) if joined.startswith(os.path.normpath(root) + os.sep) else None


def image_problem(error: Exception) -> str:
    """The ``PROBLEMS`` kind of an error from ``helpers.data.images.prepare_image``."""
    if isinstance(error, FileNotFoundError):
        return "missing_image"
    if isinstance(error, NotARegularFile):
        return "not_a_file"
    if isinstance(error, ValueError):
        return "extreme_aspect_ratio"
    return "unreadable_image"


def declared_size_differs(item: PendingRecord, image: PreparedImage) -> bool:
    """True when the annotations give a size the upright image does not have (a size left out counts only where the format requires it)."""
    declared = item.declared_size
    if declared is None:
        return False
    if item.size_problem == "size_mismatch" and any(v is None for v in declared):
        return False  # COCO, JSONL and hub records may leave the size out
    return tuple(declared) != (image.width, image.height)


def checked_images(
    pending: list[PendingRecord], references: Iterable[dict], report: LoadReport, loading: ImageLoading
) -> Iterator[tuple[PendingRecord, PreparedImage]]:
    """Check and size every pending record's image in parallel (and cache it); count the ones that cannot be used."""
    prepared = prepare_images(references, len(pending), loading.cache, loading.workers, f"{report.split or 'split'} images")
    try:
        for item, result in zip(pending, prepared):
            if isinstance(result, Exception):
                kind = image_problem(result)
                report.problem(item.record, kind, f"image {'not found' if kind == 'missing_image' else str(result)}")
                continue
            report.counts["images_cached"] += result.how == "cache_built"
            report.counts["images_from_cache"] += result.how == "cache_hit"
            if declared_size_differs(item, result):
                declared = item.declared_size
                report.problem(
                    item.record, item.size_problem,
                    f"annotations say {short(declared[0])}x{short(declared[1])}px, the upright image is {result.width}x{result.height}px",
                )
                if PROBLEMS[item.size_problem][0] == "record skipped":
                    continue
            yield item, result
    finally:
        if loading.cache is not None:
            loading.cache.save_index()  # what was built stays usable, even when a strict load stops early


def schema_row(item: PendingRecord, image: PreparedImage, report: LoadReport) -> dict:
    """The schema record of a checked image: boxes and crowd regions cleaned and counted."""
    width, height = image.width, image.height
    objects = clean_objects(item.objects, width, height, item.bbox_format, item.record, report)
    crowds = clean_objects(item.crowds, width, height, item.bbox_format, item.record, report, crowds=True)
    report.counts["images_loaded"] += 1
    report.counts["images_without_objects"] += not objects
    return {"image_id": item.image_id, "image": image.reference, "width": width, "height": height, "objects": objects, "crowd_regions": crowds}


def records_to_dataset(records: Iterable[dict]) -> Dataset:
    """Encode records (image references, not pixels) into one Arrow dataset in chunks."""
    chunks, chunk = [], []
    for record in records:
        chunk.append(record)
        if len(chunk) == CHUNK_RECORDS:
            chunks.append(Dataset.from_list(chunk, features=DETECTION_FEATURES))
            chunk = []
    if chunk:
        chunks.append(Dataset.from_list(chunk, features=DETECTION_FEATURES))
    if not chunks:  # from_list cannot build an empty table
        return Dataset.from_dict({name: [] for name in DETECTION_FEATURES}, features=DETECTION_FEATURES)
    return chunks[0] if len(chunks) == 1 else concatenate_datasets(chunks)


def load_files(pending: list[PendingRecord], root: Path, paths: list[object], report: LoadReport, loading: ImageLoading) -> Dataset:
    """Check the images of records whose ``paths`` are relative to ``root``, and build the split."""
    confined, references = [], []
    for item, relative in zip(pending, paths):
        path = confined_path(root, relative)
        if path is None:
            report.problem(item.record, "path_outside_dataset", f"image path {short(relative)} leaves {root}")
            continue
        confined.append(item)
        references.append({"path": str(path), "bytes": None})
    return records_to_dataset(schema_row(item, image, report) for item, image in checked_images(confined, references, report, loading))


def label_for(category, names: list[str] | None, known: set[str] | None) -> str | None:
    """Map a category (index into ``names`` or a label string) to its normalised label; None when unknown."""
    if names is not None:
        if isinstance(category, bool) or not isinstance(category, int) or not 0 <= category < len(names):
            return None
        label = normalize_label(names[category])
    elif isinstance(category, str):
        label = normalize_label(category)
    elif isinstance(category, int) and not isinstance(category, bool):
        label = str(category)
    else:
        return None
    return label if known is None or label in known else None
