"""Detection data in one schema: image references + objects with ``label`` and ``bbox_xyxy_px``.

Every source is turned into records of ``{"image_id", "image", "width", "height", "objects":
[{"label", "bbox_xyxy_px"}], "crowd_regions": [...]}`` (``helpers.schema``). The image is a
reference (a file path, or a hub dataset's encoded bytes) that ``helpers.images.open_image``
decodes when a batch needs it, so memory does not grow with the number of images; ``width`` and
``height`` are those of the upright image (EXIF orientation applied) and boxes are ``[x1, y1, x2,
y2]`` in its pixels. Sources (``dataset_source`` in the notebook; the layout is recognised from the
files):

- ``"synthetic"``: the generator in ``helpers.synthetic``.
- a Hugging Face dataset, hub id or local ``save_to_disk`` folder, with an ``image`` column and an
  ``objects`` column of ``bbox`` + ``category`` (the common hub detection layout); ``bbox`` is COCO
  ``xywh`` or ``xyxy`` pixels, chosen by ``bbox_format``; class names come from the ``ClassLabel``.
- a COCO folder, one annotation file per split: ``<source>/<split>/annotations.json`` (or Roboflow's
  ``_annotations.coco.json``) with images under ``<source>/<split>/``, or COCO 2017's
  ``<source>/annotations/instances_<split>.json`` with images under ``<source>/<split>/``.
  COCO boxes are always ``xywh``. Crowd annotations (``iscrowd=1``) are never training targets:
  they are kept as ``crowd_regions``, which the metrics treat as COCO ignore regions.
- a JSONL folder, ``<source>/<split>.jsonl``, one image per line:
  ``{"image": "path relative to the folder", "objects": [{"label": "cat", "bbox": [...]}],
  "image_id": optional}`` with ``bbox`` in ``bbox_format`` (``bbox_xyxy_px`` is also accepted).

Images without objects are kept: they train the empty answer and their predictions count as false
positives. Image paths must stay inside the dataset folder and name regular files. Labels follow one
rule in every loader (``helpers.labels``). Every other problem is handled by a fixed rule
(``PROBLEMS``): a skip of the record, box or annotation, or a fix, counted in a ``LoadReport`` with
example messages naming the record. With ``strict=True`` the first problem raises a ``DataError``
that names the record and the fix instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from datasets import ClassLabel, Dataset, Features, concatenate_datasets, load_dataset, load_from_disk
from datasets import Image as ImageFeature

from helpers.boxes import clip_xyxy, is_box_of_numbers, resized_size, xywh_to_xyxy
from helpers.families import get_family
from helpers.images import ImageCache, NotARegularFile, PreparedImage, cache_key, prepare_images
from helpers.labels import LABEL_PROBLEMS, label_problem, normalize_label
from helpers.parameters import BBOX_FORMATS
from helpers.schema import DETECTION_FEATURES
from helpers.synthetic import make_synthetic_dataset

CLIP_TOLERANCE_PX = 1.0  # overshoot up to this is float noise of the annotation tool: clipped, not reported
MAX_EXAMPLES = 20  # problem messages kept per split in the report
CHUNK_RECORDS = 256  # records encoded into Arrow at a time
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # threads that read, check and cache images
IMAGE_CACHE_FOLDER = ".image_cache"  # under output_root, beside the offline model cache

# kind -> (what the loader does, how to fix the data). Record kinds skip the image, box kinds the box.
PROBLEMS: dict[str, tuple[str, str]] = {
    "missing_image": ("record skipped", "add the image file or remove the record"),
    "unreadable_image": ("record skipped", "replace the file with a valid image (it cannot be decoded, or is over 512 MB)"),
    "not_a_file": ("record skipped", "point the record at a regular image file (devices, FIFOs and folders are never read)"),
    "path_outside_dataset": ("record skipped", "give image paths relative to the dataset folder, without '..' or a leading '/'"),
    "extreme_aspect_ratio": ("record skipped", "crop the image: the processor refuses sides more than 200 times longer than the other"),
    "size_mismatch": ("record skipped", "re-export the annotations for the upright image (EXIF orientation applied)"),
    "malformed_record": ("record skipped", "give the record an image and a list of objects"),
    "duplicate_image_id": ("record skipped", "give every image entry its own id: boxes are attached to images by id"),
    "malformed_annotation": ("annotation skipped", "write each annotation as an object with an image_id, a bbox and a category_id"),
    "malformed_category": ("category skipped", "write each category as an object with a number id and a name"),
    "orphan_annotation": ("box skipped", "remove the annotation or add its image to 'images'"),
    "malformed_box": ("box skipped", "write the box as 4 finite numbers"),
    "unknown_category": ("box skipped", "add the class to the dataset's categories (or to dataset_classes)"),
    **{kind: ("box skipped", f"rename the class: a label that {why} is refused") for kind, why in LABEL_PROBLEMS.items()},
    "inverted_box": ("box skipped", "check bbox_format: x2 < x1 or y2 < y1 often means xywh read as xyxy"),
    "outside_box": ("box skipped", "the box lies entirely outside the image; check its coordinates"),
    "degenerate_box": ("box skipped", "the box is under 1 px wide or high; remove it"),
    "clipped_box": ("box clipped to the image", "make the box fit inside the image"),
}
# What a loader kept, in the report's first rows.
KEPT_COUNTS = ("images_loaded", "images_without_objects", "boxes_kept", "crowd_regions_kept", "images_cached", "images_from_cache")


class DataError(ValueError):
    """A dataset problem that stops loading: it names the record and the fix."""


@dataclass
class LoadReport:
    """What a loader kept, fixed and skipped for one split, with messages naming records."""

    source: str
    split: str
    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def problem(self, record: str, kind: str, detail: str) -> None:
        """Count one problem of ``kind`` (see ``PROBLEMS``), or raise it in strict mode."""
        action, fix = PROBLEMS[kind]
        message = f"{self.source} [{self.split}] {record}: {detail}"
        if self.strict:
            raise DataError(f"{message}. Fix: {fix}; or set data_strict=False to have it {action} and counted")
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind} ({action}): {message}")

    def as_dict(self) -> dict:
        """Counts and example messages as plain JSON-able values."""
        return {"source": self.source, "split": self.split, "counts": dict(self.counts), "examples": list(self.examples)}


@dataclass(frozen=True)
class ImageLoading:
    """How loaders treat images: the optional downscaled cache and the threads that read them."""

    cache: ImageCache | None = None
    workers: int = DEFAULT_WORKERS


@dataclass(frozen=True)
class SplitOptions:
    """What every loader takes besides its source: a cap on images, the accepted labels, strictness, the split's name, image handling."""

    max_images: int | None = None  # the first N records (None: all)
    known_classes: set[str] | None = None  # normalised labels accepted (None: all)
    strict: bool = False  # the first problem raises a DataError
    split: str = ""  # named in the report and its messages
    loading: ImageLoading = ImageLoading()


def image_cache_for(cache_root: str | Path, source: str, family: str, min_pixels: int, max_pixels: int) -> ImageCache:
    """The cache of ``source``'s images at the model's input size for ``family`` and the pixel bounds."""
    resize_key = f"factor={get_family(family).resize_factor},min_pixels={min_pixels},max_pixels={max_pixels}"
    source_id = str(Path(source).absolute()) if Path(source).exists() else source
    folder = Path(cache_root) / cache_key(source_id, resize_key)[:16]
    return ImageCache(folder, lambda width, height: resized_size(family, width, height, min_pixels, max_pixels), resize_key)


def to_xyxy_px(bbox: list[float], bbox_format: str) -> list[float]:
    """Convert one pixel box from ``bbox_format`` to ``[x1, y1, x2, y2]``."""
    if bbox_format == "xywh":
        return xywh_to_xyxy(bbox)
    if bbox_format == "xyxy":
        return list(bbox)
    raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")


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
    kept_count: str = "boxes_kept",
) -> list[dict]:
    """Turn ``(bbox, label or None if unknown, category as written)`` triples into schema objects."""
    objects = []
    for index, (bbox, label, category) in enumerate(raw_objects):
        where = f"{record} {'box' if kept_count == 'boxes_kept' else 'crowd region'} {index}"
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
        box, status = clean_box(to_xyxy_px(bbox, bbox_format), width, height)
        if box is None:
            report.problem(where, status, f"bbox {list(bbox)} ({bbox_format}) on a {width}x{height}px image")
            continue
        if status == "clipped_box":
            report.problem(where, status, f"bbox {list(bbox)} ({bbox_format}) clipped to {box} on a {width}x{height}px image")
        objects.append({"label": label, "bbox_xyxy_px": box})
    report.counts[kept_count] += len(objects)
    return objects


def short(value, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters, for messages about arbitrary data."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


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


def confined_path(root: Path, relative: object) -> Path | None:
    """``root / relative`` when it stays inside ``root`` written as it is (no '..' out, no absolute path), else None."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or os.path.isabs(relative):
        return None
    joined = os.path.normpath(os.path.join(root, relative))
    # Lexical, not resolved: a symbolic link the user placed inside the folder is theirs to follow.
    return Path(joined) if joined.startswith(os.path.normpath(root) + os.sep) else None


def image_problem(error: Exception) -> str:
    """The ``PROBLEMS`` kind of an error from ``helpers.images.prepare_image``."""
    if isinstance(error, FileNotFoundError):
        return "missing_image"
    if isinstance(error, NotARegularFile):
        return "not_a_file"
    if isinstance(error, ValueError):
        return "extreme_aspect_ratio"
    return "unreadable_image"


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
            declared = item.declared_size
            if declared is not None and all(v is not None for v in declared) and tuple(declared) != (result.width, result.height):
                report.problem(
                    item.record, "size_mismatch",
                    f"annotations say {short(declared[0])}x{short(declared[1])}px, the upright image is {result.width}x{result.height}px",
                )
                continue
            yield item, result
    finally:
        if loading.cache is not None:
            loading.cache.save_index()  # what was built stays usable, even when a strict load stops early


def schema_row(item: PendingRecord, image: PreparedImage, report: LoadReport) -> dict:
    """The schema record of a checked image: boxes and crowd regions cleaned and counted."""
    width, height = image.width, image.height
    objects = clean_objects(item.objects, width, height, item.bbox_format, item.record, report)
    crowds = clean_objects(item.crowds, width, height, item.bbox_format, item.record, report, "crowd_regions_kept")
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


# ---------------------------------------------------------------- Hugging Face datasets


def category_names(objects_feature) -> list[str] | None:
    """Class names of the ``objects.category`` feature when it is a ``ClassLabel``, else None."""
    # A Sequence({...}) column is stored as a dict of lists; a List({...}) as a list of dicts.
    inner = getattr(objects_feature, "feature", objects_feature)
    category = inner["category"]
    category = getattr(category, "feature", category)
    return list(category.names) if isinstance(category, ClassLabel) else None


def iter_bbox_category(objects: dict | list[dict]):
    """Yield ``(bbox, category)`` pairs from either storage layout of an ``objects`` value."""
    if isinstance(objects, dict):
        yield from zip(objects["bbox"], objects["category"])
    else:
        yield from ((obj.get("bbox"), obj.get("category")) for obj in objects)


def _read_hf_source(source: str, split: str) -> Dataset:
    """Open a split of a hub dataset id or a local ``save_to_disk`` folder."""
    path = Path(source)
    if (path / "dataset_dict.json").exists():
        dataset_dict = load_from_disk(str(path))
        if split not in dataset_dict:
            raise DataError(f"{source}: no split {split!r}; it has {sorted(dataset_dict)}. Set the *_split parameters")
        return dataset_dict[split]
    if (path / "dataset_info.json").exists():
        return load_from_disk(str(path))
    return load_dataset(source, split=split)


def load_hf_detection_split(source: str, bbox_format: str, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load a hub-layout detection split (``image`` + ``objects.bbox``/``objects.category``); images stay in its Arrow files."""
    split, max_images, known_classes, loading = options.split, options.max_images, options.known_classes, options.loading
    raw = _read_hf_source(source, split)
    if "image" not in raw.column_names or "objects" not in raw.column_names:
        raise DataError(f"{source}[{split}]: expected columns 'image' and 'objects', got {raw.column_names}")
    if not isinstance(raw.features["image"], ImageFeature):
        raise DataError(f"{source}[{split}]: column 'image' is {raw.features['image']}, expected an Image feature")
    if max_images is not None:
        raw = raw.select(range(min(max_images, len(raw))))
    raw = raw.cast_column("image", ImageFeature(decode=False))  # decoded here one at a time, so a bad file is one counted record
    names = category_names(raw.features["objects"])
    report = LoadReport(source, split, options.strict)
    pending = []
    for index, example in enumerate(raw.remove_columns("image")):  # annotations only: no image bytes read here
        record = f"row {index} (image_id {short(example.get('image_id', index))})"
        if example["objects"] is None:
            report.problem(record, "malformed_record", "objects is missing")
            continue
        triples = [(bbox, label_for(cat, names, known_classes), cat) for bbox, cat in iter_bbox_category(example["objects"])]
        declared = (example.get("width"), example.get("height"))
        pending.append(PendingRecord(record, str(example.get("image_id", index)), declared, triples, bbox_format, row=index))
    images = raw.select_columns(["image"])
    references = ((images[item.row]["image"] or {"bytes": None, "path": None}) for item in pending)
    rows, kept = [], []
    for item, image in checked_images(pending, references, report, loading):
        rows.append(schema_row(item, image, report))
        kept.append(item.row)
    if loading.cache is not None or not rows:
        return records_to_dataset(rows), report
    # Without a cache the images stay the hub's encoded bytes, in its memory-mapped Arrow files.
    annotations = Dataset.from_list([{k: v for k, v in row.items() if k != "image"} for row in rows], features=without_image())
    combined = concatenate_datasets([images.select(kept).flatten_indices(), annotations], axis=1)
    return combined.select_columns(list(DETECTION_FEATURES)), report


def without_image() -> Features:
    """The schema's features other than ``image``."""
    return Features({name: feature for name, feature in DETECTION_FEATURES.items() if name != "image"})


# ---------------------------------------------------------------- COCO folders

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
    max_images, known_classes = options.max_images, options.known_classes
    coco = read_coco_file(annotation_file)
    report = LoadReport(str(annotation_file), options.split, options.strict)
    categories = coco_categories(coco.get("categories", []), report)
    images, shared_ids = coco_image_entries(coco["images"], report)
    # The annotations of a shared id go with its skipped images: they are not orphans.
    by_image = coco_annotations_by_image(coco["annotations"], {entry["id"] for entry in images} | shared_ids, report)
    if max_images is not None:
        images = images[:max_images]
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


# ---------------------------------------------------------------- JSONL folders


def load_jsonl_split(jsonl_file: Path, bbox_format: str, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load one JSONL file: ``{"image", "objects": [{"label", "bbox"}], "image_id"?}`` per line."""
    max_images, known_classes = options.max_images, options.known_classes
    report = LoadReport(str(jsonl_file), options.split, options.strict)
    lines = [(number, line) for number, line in enumerate(jsonl_file.read_text().splitlines(), start=1) if line.strip()]
    if max_images is not None:
        lines = lines[:max_images]
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


# ---------------------------------------------------------------- dispatch


def detect_source_kind(source: str) -> str:
    """``"synthetic"``, ``"hf_disk"``, ``"coco"``, ``"jsonl"`` or ``"hub"`` for a ``dataset_source``."""
    if source == "synthetic":
        return "synthetic"
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return "hf_disk"
        if any(path.glob("*.jsonl")):
            return "jsonl"
        if any(any(path.glob(layout.format(split="*"))) for layout in COCO_LAYOUTS):
            return "coco"
        raise DataError(
            f"dataset_source={source!r} is a folder in no supported layout: a `save_to_disk` dataset, "
            f"<split>.jsonl files, or COCO annotations as one of {COCO_LAYOUTS}"
        )
    if path.exists() or source.startswith((".", "/", "~")):
        raise DataError(f"dataset_source={source!r}: expected a folder (see helpers.data for the layouts), found none there")
    return "hub"


def load_split(
    source: str,
    kind: str,
    split: str,
    bbox_format: str,
    max_images: int | None,
    known_classes: set[str] | None,
    strict: bool,
    loading: ImageLoading = ImageLoading(),
) -> tuple[Dataset, LoadReport]:
    """Load one split of a non-synthetic source of the given ``kind``."""
    options = SplitOptions(max_images, known_classes, strict, split, loading)
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")
    if kind in ("hf_disk", "hub"):
        return load_hf_detection_split(source, bbox_format, options)
    if kind == "coco":
        found = find_coco_annotations(Path(source), split)
        if found is None:
            tried = [str(Path(source) / layout.format(split=split)) for layout in COCO_LAYOUTS]
            raise DataError(f"{source}: no COCO annotations for split {split!r}; looked for {tried}. Set the *_split parameters")
        return load_coco_split(*found, options)
    if kind == "jsonl":
        jsonl_file = Path(source) / f"{split}.jsonl"
        if not jsonl_file.is_file():
            present = sorted(p.stem for p in Path(source).glob("*.jsonl"))
            raise DataError(f"{source}: no {split}.jsonl (splits there: {present}). Set the *_split parameters")
        return load_jsonl_split(jsonl_file, bbox_format, options)
    raise ValueError(f"unknown source kind {kind!r}")


def dataset_class_names(dataset: Dataset) -> list[str]:
    """Sorted label names present in a detection dataset."""
    return sorted({obj["label"] for objects in dataset["objects"] for obj in objects})


def load_detection_splits(
    source: str,
    split_names: dict[str, str],
    sizes: dict[str, int],
    bbox_format: str,
    seed: int,
    synthetic_options: dict,
    known_classes: list[str] | None = None,
    strict: bool = False,
    loading: ImageLoading = ImageLoading(),
) -> tuple[dict[str, Dataset], dict[str, LoadReport]]:
    """Load the ``train``/``eval``/``test`` splits from any supported source.

    ``split_names`` maps our split to the source's split name, ``sizes`` caps each split's image
    count (0 = all; synthetic splits are generated at exactly that size with distinct seeds),
    ``known_classes`` (optional, normalised like every label) are the only labels accepted, ``loading``
    says whether images are cached downscaled and how many threads read them. Returns the splits and their reports.
    """
    source = str(Path(source).expanduser()) if source.startswith("~") else source
    kind = detect_source_kind(source)
    known = {normalize_label(name) for name in known_classes} if known_classes else None
    splits: dict[str, Dataset] = {}
    reports: dict[str, LoadReport] = {}
    for offset, (ours, theirs) in enumerate(split_names.items()):
        if sizes[ours] < 0:
            raise ValueError(f"{ours}_size must be >= 0 (0: all images), got {sizes[ours]}")
        if kind == "synthetic":
            if sizes[ours] < 1:
                raise ValueError(f"{ours}_size must be >= 1 for synthetic data, got {sizes[ours]}")
            splits[ours] = make_synthetic_dataset(sizes[ours], seed=seed * 1000 + offset, **synthetic_options)
            reports[ours] = LoadReport("synthetic", ours, strict)
            reports[ours].counts.update(images_loaded=sizes[ours], boxes_kept=sum(len(o) for o in splits[ours]["objects"]))
        else:
            splits[ours], reports[ours] = load_split(source, kind, theirs, bbox_format, sizes[ours] or None, known, strict, loading)
        if len(splits[ours]) == 0:
            raise DataError(f"{source} [{theirs}]: no usable images; problems: {dict(reports[ours].counts)}, e.g. {reports[ours].examples[:3]}")
    return splits, reports


def format_data_report(reports: dict[str, LoadReport]) -> str:
    """A table of kept, fixed and skipped counts per split, with what each problem does."""
    names = list(reports)
    kinds = ["images_loaded", "images_without_objects", "boxes_kept"]
    kinds += [kind for kind in (*KEPT_COUNTS, *PROBLEMS) if kind not in kinds and any(report.counts[kind] for report in reports.values())]
    width = max(len(kind) for kind in kinds) + 2
    lines = [" " * width + "".join(f"{name:>10}" for name in names)]
    for kind in kinds:
        action = f"   ({PROBLEMS[kind][0]})" if kind in PROBLEMS else ""
        lines.append(f"{kind:<{width}}" + "".join(f"{reports[name].counts[kind]:>10}" for name in names) + action)
    return "\n".join(lines)
