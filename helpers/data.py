"""Detection data in one schema: image + objects with ``label`` and ``bbox_xyxy_px``.

Every source (the synthetic generator, a Hugging Face dataset) is turned into records of
``{"image_id", "image", "width", "height", "objects": [{"label", "bbox_xyxy_px"}]}`` with the
image in RGB and boxes as ``[x1, y1, x2, y2]`` in pixels of that image.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datasets import ClassLabel, Dataset, load_dataset, load_from_disk
from PIL import ImageOps

from helpers.schema import DETECTION_FEATURES
from helpers.synthetic import make_synthetic_dataset


BBOX_FORMATS = ("xywh", "xyxy")  # xywh = COCO [x, y, width, height]; xyxy = [x1, y1, x2, y2]


def to_xyxy_px(bbox: list[float], bbox_format: str) -> list[float]:
    """Convert one pixel box from ``bbox_format`` to ``[x1, y1, x2, y2]``."""
    if bbox_format == "xywh":
        x, y, w, h = bbox
        return [x, y, x + w, y + h]
    if bbox_format == "xyxy":
        return list(bbox)
    raise ValueError(f"unknown bbox_format {bbox_format!r}; expected one of {BBOX_FORMATS}")


def clean_box(bbox_xyxy_px: list[float], width: int, height: int) -> tuple[list[float] | None, str]:
    """Clip a box to the image; return ``(box, "ok" | "clipped")`` or ``(None, reason)`` to skip it."""
    x1, y1, x2, y2 = (float(v) for v in bbox_xyxy_px)
    if x2 < x1 or y2 < y1:
        return None, "inverted"
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return None, "degenerate"  # zero area, or entirely outside the image
    return clipped, ("ok" if clipped == [x1, y1, x2, y2] else "clipped")


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
        yield from ((obj["bbox"], obj["category"]) for obj in objects)


def _read_source(source: str, split: str):
    """Open a split of a hub dataset id or a local ``save_to_disk`` / data folder."""
    path = Path(source)
    if path.exists() and (path / "dataset_dict.json").exists():
        return load_from_disk(str(path))[split]
    if path.exists() and (path / "dataset_info.json").exists():
        return load_from_disk(str(path))
    return load_dataset(source, split=split)


def load_hf_detection_split(source: str, split: str, bbox_format: str, max_images: int | None = None) -> tuple[Dataset, Counter]:
    """Load a hub-layout detection split (``objects.bbox`` + ``objects.category``) into our schema.

    Returns the records and a counter of fixes and skips (``clipped``, ``degenerate``, ...).
    """
    raw = _read_source(source, split)
    if max_images is not None:
        raw = raw.select(range(min(max_images, len(raw))))
    if "image" not in raw.column_names or "objects" not in raw.column_names:
        raise ValueError(f"{source}[{split}]: expected columns 'image' and 'objects', got {raw.column_names}")
    names = category_names(raw.features["objects"])
    report: Counter = Counter()
    records = []
    for index, example in enumerate(raw):
        image = ImageOps.exif_transpose(example["image"]).convert("RGB")  # boxes refer to the upright image
        objects = []
        for bbox, category in iter_bbox_category(example["objects"]):
            label = names[category] if names is not None else str(category)
            box, status = clean_box(to_xyxy_px(bbox, bbox_format), image.width, image.height)
            report[status] += 1
            if box is not None:
                objects.append({"label": label, "bbox_xyxy_px": box})
        records.append({"image_id": example.get("image_id", index), "image": image, "width": image.width, "height": image.height, "objects": objects})
    report["images"] = len(records)
    return Dataset.from_list(records, features=DETECTION_FEATURES), report


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
) -> tuple[dict[str, Dataset], dict[str, Counter]]:
    """Load the ``train``/``eval``/``test`` splits from ``"synthetic"``, a hub id or a local folder.

    ``split_names`` maps our split to the source's split name, ``sizes`` caps each split's image
    count (0 = all; synthetic splits are generated at exactly that size with distinct seeds).
    Returns the splits and, per split, the counts of boxes fixed or skipped.
    """
    splits: dict[str, Dataset] = {}
    reports: dict[str, Counter] = {}
    for offset, (ours, theirs) in enumerate(split_names.items()):
        if source == "synthetic":
            if sizes[ours] < 1:
                raise ValueError(f"{ours}_size must be >= 1 for synthetic data, got {sizes[ours]}")
            splits[ours] = make_synthetic_dataset(sizes[ours], seed=seed * 1000 + offset, **synthetic_options)
            reports[ours] = Counter(images=sizes[ours], ok=sum(len(o) for o in splits[ours]["objects"]))
        else:
            splits[ours], reports[ours] = load_hf_detection_split(source, theirs, bbox_format, sizes[ours] or None)
    return splits, reports
