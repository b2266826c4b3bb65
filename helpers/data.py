"""Detection data in one schema: image + objects with ``label`` and ``bbox_xyxy_px``.

Every source is turned into records of ``{"image_id", "image", "width", "height", "objects":
[{"label", "bbox_xyxy_px"}]}`` (``helpers.schema``), the image in RGB with its EXIF orientation
applied and boxes as ``[x1, y1, x2, y2]`` in pixels of that upright image. Sources
(``dataset_source`` in the notebook; the layout is recognised from the files):

- ``"synthetic"``: the generator in ``helpers.synthetic``.
- a Hugging Face dataset, hub id or local ``save_to_disk`` folder, with an ``image`` column and an
  ``objects`` column of ``bbox`` + ``category`` (the common hub detection layout); ``bbox`` is COCO
  ``xywh`` or ``xyxy`` pixels, chosen by ``bbox_format``; class names come from the ``ClassLabel``.
- a COCO folder, one annotation file per split: ``<source>/<split>/annotations.json`` (or Roboflow's
  ``_annotations.coco.json``) with images under ``<source>/<split>/``, or COCO 2017's
  ``<source>/annotations/instances_<split>.json`` with images under ``<source>/<split>/``.
  COCO boxes are always ``xywh``.
- a JSONL folder, ``<source>/<split>.jsonl``, one image per line:
  ``{"image": "path relative to the folder", "objects": [{"label": "cat", "bbox": [...]}],
  "image_id": optional}`` with ``bbox`` in ``bbox_format`` (``bbox_xyxy_px`` is also accepted).

Problems are handled by fixed rules (``PROBLEMS``): each is a skip of the record or box, or a fix,
and is counted in a ``LoadReport`` with example messages naming the record. With ``strict=True``
the first problem raises a ``DataError`` that names the record and the fix instead.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from datasets import ClassLabel, Dataset, concatenate_datasets, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from PIL import ExifTags, Image, ImageOps

from helpers.boxes import is_box_of_numbers
from helpers.parameters import BBOX_FORMATS
from helpers.schema import DETECTION_FEATURES
from helpers.synthetic import make_synthetic_dataset

CLIP_TOLERANCE_PX = 1.0  # overshoot up to this is float noise of the annotation tool: clipped, not reported
MAX_EXAMPLES = 20  # problem messages kept per split in the report
CHUNK_RECORDS = 256  # records encoded into Arrow at a time, so decoded images never pile up in memory

# kind -> (what the loader does, how to fix the data). Record kinds skip the image, box kinds the box.
PROBLEMS: dict[str, tuple[str, str]] = {
    "missing_image": ("record skipped", "add the image file or remove the record"),
    "unreadable_image": ("record skipped", "replace the file with a valid image (it cannot be decoded)"),
    "size_mismatch": ("record skipped", "re-export the annotations for the upright image (EXIF orientation applied)"),
    "malformed_record": ("record skipped", "give the record an image and a list of objects"),
    "orphan_annotation": ("box skipped", "remove the annotation or add its image to 'images'"),
    "crowd_box": ("box skipped", "none needed: COCO iscrowd regions mark groups, not objects (never an error)"),
    "malformed_box": ("box skipped", "write the box as 4 finite numbers"),
    "unknown_category": ("box skipped", "add the class to the dataset's categories (or to dataset_classes)"),
    "inverted_box": ("box skipped", "check bbox_format: x2 < x1 or y2 < y1 often means xywh read as xyxy"),
    "outside_box": ("box skipped", "the box lies entirely outside the image; check its coordinates"),
    "degenerate_box": ("box skipped", "the box is under 1 px wide or high; remove it"),
    "clipped_box": ("box clipped to the image", "make the box fit inside the image"),
}


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


def to_xyxy_px(bbox: list[float], bbox_format: str) -> list[float]:
    """Convert one pixel box from ``bbox_format`` to ``[x1, y1, x2, y2]``."""
    if bbox_format == "xywh":
        x, y, w, h = bbox
        return [x, y, x + w, y + h]
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
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return None, "degenerate_box"
    overshoot = max(abs(a - b) for a, b in zip(clipped, (x1, y1, x2, y2)))
    return clipped, ("ok" if overshoot <= CLIP_TOLERANCE_PX else "clipped_box")


def clean_objects(
    raw_objects: list[tuple[object, str | None, str]],
    width: int,
    height: int,
    bbox_format: str,
    record: str,
    report: LoadReport,
) -> list[dict]:
    """Turn ``(bbox, label or None if unknown, category as written)`` triples into schema objects."""
    objects = []
    for index, (bbox, label, category) in enumerate(raw_objects):
        where = f"{record} box {index}"
        if not is_box_of_numbers(bbox):
            report.problem(where, "malformed_box", f"bbox {bbox!r} is not 4 finite numbers")
            continue
        if label is None:
            report.problem(where, "unknown_category", f"category {category!r} is not one of the dataset's classes")
            continue
        box, status = clean_box(to_xyxy_px(bbox, bbox_format), width, height)
        if box is None:
            report.problem(where, status, f"bbox {list(bbox)} ({bbox_format}) on a {width}x{height}px image")
            continue
        if status == "clipped_box":
            report.problem(where, status, f"bbox {list(bbox)} ({bbox_format}) clipped to {box} on a {width}x{height}px image")
        objects.append({"label": label, "bbox_xyxy_px": box})
    report.counts["boxes_kept"] += len(objects)
    return objects


def read_image(data: bytes | None, path: str | Path | None) -> tuple[dict | Image.Image, int, int]:
    """Decode an image from bytes or a file; return a dataset image value and the upright size.

    Raises ``FileNotFoundError`` for a missing file and ``OSError`` for one that cannot be decoded.
    An RGB image without EXIF rotation keeps its original bytes; others are rotated and converted.
    """
    if data is None:
        if path is None:
            raise FileNotFoundError("no image given")
        data = Path(path).read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode fully now: a truncated file fails here, not in the middle of training
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        raise OSError(str(error)) from error
    if image.mode == "RGB" and image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return {"bytes": data, "path": None}, image.width, image.height
    upright = ImageOps.exif_transpose(image).convert("RGB")  # boxes refer to the image as displayed
    return upright, upright.width, upright.height


def load_record_image(
    data: bytes | None, path: str | Path | None, declared_size: tuple | None, record: str, report: LoadReport
) -> tuple[dict | Image.Image, int, int] | None:
    """Read a record's image, or count why it is skipped (missing, unreadable, size mismatch)."""
    try:
        image, width, height = read_image(data, path)
    except FileNotFoundError:
        report.problem(record, "missing_image", f"image {str(path)!r} not found")
        return None
    except OSError as error:
        report.problem(record, "unreadable_image", f"image {str(path or 'bytes')!r} cannot be decoded ({error})")
        return None
    if declared_size is not None and all(v is not None for v in declared_size) and tuple(declared_size) != (width, height):
        report.problem(
            record, "size_mismatch", f"annotations say {declared_size[0]}x{declared_size[1]}px, the upright image is {width}x{height}px"
        )
        return None
    return image, width, height


def records_to_dataset(records: Iterator[dict]) -> Dataset:
    """Encode records into one Arrow dataset in chunks, so decoded images never pile up."""
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


def _record(image_id: str, image, width: int, height: int, objects: list[dict], report: LoadReport) -> dict:
    """A schema record, counted in the report."""
    report.counts["images_loaded"] += 1
    report.counts["images_without_objects"] += not objects
    return {"image_id": image_id, "image": image, "width": width, "height": height, "objects": objects}


def _label_for(category, names: list[str] | None, known: set[str] | None) -> str | None:
    """Map a category (index into ``names`` or a label string) to its label; None when unknown."""
    if names is not None:
        if isinstance(category, bool) or not isinstance(category, int) or not 0 <= category < len(names):
            return None
        label = names[category]
    elif isinstance(category, str) and category.strip():
        label = category.strip()
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


def load_hf_detection_split(
    source: str, split: str, bbox_format: str, max_images: int | None = None, known_classes: set[str] | None = None, strict: bool = False
) -> tuple[Dataset, LoadReport]:
    """Load a hub-layout detection split (``image`` + ``objects.bbox``/``objects.category``)."""
    raw = _read_hf_source(source, split)
    if "image" not in raw.column_names or "objects" not in raw.column_names:
        raise DataError(f"{source}[{split}]: expected columns 'image' and 'objects', got {raw.column_names}")
    if not isinstance(raw.features["image"], ImageFeature):
        raise DataError(f"{source}[{split}]: column 'image' is {raw.features['image']}, expected an Image feature")
    if max_images is not None:
        raw = raw.select(range(min(max_images, len(raw))))
    raw = raw.cast_column("image", ImageFeature(decode=False))  # decode here, so a bad file is one counted record
    names = category_names(raw.features["objects"])
    report = LoadReport(source, split, strict)

    def records() -> Iterator[dict]:
        for index, example in enumerate(raw):
            image_id = str(example.get("image_id", index))
            record = f"row {index} (image_id {image_id})"
            value = example["image"] or {}
            loaded = load_record_image(value.get("bytes"), value.get("path"), (example.get("width"), example.get("height")), record, report)
            if loaded is None:
                continue
            image, width, height = loaded
            if example["objects"] is None:
                report.problem(record, "malformed_record", "objects is missing")
                continue
            triples = [(bbox, _label_for(cat, names, known_classes), cat) for bbox, cat in iter_bbox_category(example["objects"])]
            yield _record(image_id, image, width, height, clean_objects(triples, width, height, bbox_format, record, report), report)

    return records_to_dataset(records()), report


# ---------------------------------------------------------------- COCO folders

COCO_LAYOUTS = ("{split}/annotations.json", "{split}/_annotations.coco.json", "annotations/instances_{split}.json")


def find_coco_annotations(source: Path, split: str) -> tuple[Path, Path] | None:
    """``(annotation file, image folder)`` of a split in one of ``COCO_LAYOUTS``, or None."""
    for layout in COCO_LAYOUTS:
        candidate = source / layout.format(split=split)
        if candidate.is_file():
            return candidate, source / split
    return None


def load_coco_split(
    annotation_file: Path, image_dir: Path, max_images: int | None = None, known_classes: set[str] | None = None, strict: bool = False, split: str = ""
) -> tuple[Dataset, LoadReport]:
    """Load a COCO annotation file (``images``, ``annotations``, ``categories``; boxes ``xywh``)."""
    try:
        coco = json.loads(annotation_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{annotation_file}: not a readable COCO JSON file ({error})") from error
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise DataError(f"{annotation_file}: a COCO file needs 'images' and 'annotations' lists")
    report = LoadReport(str(annotation_file), split, strict)
    categories = {c.get("id"): str(c.get("name")) for c in coco.get("categories", []) if isinstance(c, dict)}
    images = [image for image in coco["images"] if isinstance(image, dict)]
    image_ids = {image.get("id") for image in images}
    by_image: dict = {}
    for index, ann in enumerate(coco["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in image_ids:
            report.problem(f"annotation {index}", "orphan_annotation", f"image_id {image_id!r} is not in 'images'")
            continue
        by_image.setdefault(image_id, []).append(ann)
    if max_images is not None:
        images = images[:max_images]

    def records() -> Iterator[dict]:
        for entry in images:
            record = f"image id {entry.get('id')!r} ({entry.get('file_name')!r})"
            if not isinstance(entry.get("file_name"), str) or "id" not in entry:
                report.problem(record, "malformed_record", "the image entry needs an id and a file_name")
                continue
            declared = (entry.get("width"), entry.get("height"))
            loaded = load_record_image(None, image_dir / entry["file_name"], declared, record, report)
            if loaded is None:
                continue
            image, width, height = loaded
            triples = []
            for ann in by_image.get(entry["id"], []):
                if ann.get("iscrowd"):
                    report.counts["crowd_box"] += 1  # valid COCO data, not an error: counted even in strict mode
                    continue
                name = categories.get(ann.get("category_id"))
                label = name if name is not None and (known_classes is None or name in known_classes) else None
                triples.append((ann.get("bbox"), label, ann.get("category_id")))
            yield _record(str(entry["id"]), image, width, height, clean_objects(triples, width, height, "xywh", record, report), report)

    return records_to_dataset(records()), report


# ---------------------------------------------------------------- JSONL folders


def load_jsonl_split(
    jsonl_file: Path, bbox_format: str, max_images: int | None = None, known_classes: set[str] | None = None, strict: bool = False, split: str = ""
) -> tuple[Dataset, LoadReport]:
    """Load one JSONL file: ``{"image", "objects": [{"label", "bbox"}], "image_id"?}`` per line."""
    report = LoadReport(str(jsonl_file), split, strict)
    lines = [(number, line) for number, line in enumerate(jsonl_file.read_text().splitlines(), start=1) if line.strip()]
    if max_images is not None:
        lines = lines[:max_images]

    def records() -> Iterator[dict]:
        for number, line in lines:
            record = f"line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                report.problem(record, "malformed_record", f"not valid JSON ({error.msg})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("objects"), list):
                report.problem(record, "malformed_record", "needs an 'image' path and an 'objects' list")
                continue
            record = f"line {number} ({row['image']!r})"
            loaded = load_record_image(None, jsonl_file.parent / row["image"], (row.get("width"), row.get("height")), record, report)
            if loaded is None:
                continue
            image, width, height = loaded
            triples = []
            for obj in row["objects"]:
                obj = obj if isinstance(obj, dict) else {}
                # "bbox_xyxy_px" says its own format; "bbox" follows bbox_format.
                bbox = to_xyxy_px_if_given(obj, bbox_format)
                triples.append((bbox, _label_for(obj.get("label"), None, known_classes), obj.get("label")))
            image_id = str(row.get("image_id", row["image"]))
            yield _record(image_id, image, width, height, clean_objects(triples, width, height, "xyxy", record, report), report)

    return records_to_dataset(records()), report


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
    source: str, kind: str, split: str, bbox_format: str, max_images: int | None, known_classes: set[str] | None, strict: bool
) -> tuple[Dataset, LoadReport]:
    """Load one split of a non-synthetic source of the given ``kind``."""
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")
    if kind in ("hf_disk", "hub"):
        return load_hf_detection_split(source, split, bbox_format, max_images, known_classes, strict)
    if kind == "coco":
        found = find_coco_annotations(Path(source), split)
        if found is None:
            tried = [str(Path(source) / layout.format(split=split)) for layout in COCO_LAYOUTS]
            raise DataError(f"{source}: no COCO annotations for split {split!r}; looked for {tried}. Set the *_split parameters")
        return load_coco_split(*found, max_images, known_classes, strict, split)
    if kind == "jsonl":
        jsonl_file = Path(source) / f"{split}.jsonl"
        if not jsonl_file.is_file():
            present = sorted(p.stem for p in Path(source).glob("*.jsonl"))
            raise DataError(f"{source}: no {split}.jsonl (splits there: {present}). Set the *_split parameters")
        return load_jsonl_split(jsonl_file, bbox_format, max_images, known_classes, strict, split)
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
) -> tuple[dict[str, Dataset], dict[str, LoadReport]]:
    """Load the ``train``/``eval``/``test`` splits from any supported source.

    ``split_names`` maps our split to the source's split name, ``sizes`` caps each split's image
    count (0 = all; synthetic splits are generated at exactly that size with distinct seeds),
    ``known_classes`` (optional) are the only labels accepted. Returns the splits and their reports.
    """
    source = str(Path(source).expanduser()) if source.startswith("~") else source
    kind = detect_source_kind(source)
    known = set(known_classes) if known_classes else None
    splits: dict[str, Dataset] = {}
    reports: dict[str, LoadReport] = {}
    for offset, (ours, theirs) in enumerate(split_names.items()):
        if kind == "synthetic":
            if sizes[ours] < 1:
                raise ValueError(f"{ours}_size must be >= 1 for synthetic data, got {sizes[ours]}")
            splits[ours] = make_synthetic_dataset(sizes[ours], seed=seed * 1000 + offset, **synthetic_options)
            reports[ours] = LoadReport("synthetic", ours, strict)
            reports[ours].counts.update(images_loaded=sizes[ours], boxes_kept=sum(len(o) for o in splits[ours]["objects"]))
        else:
            splits[ours], reports[ours] = load_split(source, kind, theirs, bbox_format, sizes[ours] or None, known, strict)
        if len(splits[ours]) == 0:
            raise DataError(f"{source} [{theirs}]: no usable images; problems: {dict(reports[ours].counts)}, e.g. {reports[ours].examples[:3]}")
    return splits, reports


def format_data_report(reports: dict[str, LoadReport]) -> str:
    """A table of kept, fixed and skipped counts per split, with what each problem does."""
    names = list(reports)
    kinds = ["images_loaded", "images_without_objects", "boxes_kept"]
    kinds += [kind for kind in PROBLEMS if any(report.counts[kind] for report in reports.values())]
    width = max(len(kind) for kind in kinds) + 2
    lines = [" " * width + "".join(f"{name:>10}" for name in names)]
    for kind in kinds:
        action = f"   ({PROBLEMS[kind][0]})" if kind in PROBLEMS else ""
        lines.append(f"{kind:<{width}}" + "".join(f"{reports[name].counts[kind]:>10}" for name in names) + action)
    return "\n".join(lines)
