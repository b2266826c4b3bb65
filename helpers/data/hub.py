"""Hugging Face detection datasets, a hub id or a local ``save_to_disk`` folder: ``image`` + ``objects.bbox``/``objects.category``."""

from __future__ import annotations

from pathlib import Path

from datasets import ClassLabel, Dataset, Features, concatenate_datasets, load_dataset, load_from_disk
from datasets import Image as ImageFeature

from helpers.data.records import PendingRecord, SplitOptions, cap_note, checked_images, label_for, records_to_dataset, schema_row
from helpers.data.report import DataError, LoadReport, short
from helpers.data.schema import DETECTION_FEATURES

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


def load_hf_detection_split(source: str | Path, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load a hub-layout detection split (``image`` + ``objects.bbox``/``objects.category``); images stay in its Arrow files."""
    split, max_images, known_classes, loading = options.split, options.max_images, options.known_classes, options.loading
    source = str(source)
    raw = _read_hf_source(source, split)
    if "image" not in raw.column_names or "objects" not in raw.column_names:
        raise DataError(f"{source}[{split}]: expected columns 'image' and 'objects', got {raw.column_names}")
    if not isinstance(raw.features["image"], ImageFeature):
        raise DataError(f"{source}[{split}]: column 'image' is {raw.features['image']}, expected an Image feature")
    report = LoadReport(source, split, options.strict)
    if max_images is not None and len(raw) > max_images:
        report.notes.append(cap_note(max_images, len(raw)))
        raw = raw.select(range(max_images))
    raw = raw.cast_column("image", ImageFeature(decode=False))  # decoded here one at a time, so a bad file is one counted record
    names = category_names(raw.features["objects"])
    pending = []
    for index, example in enumerate(raw.remove_columns("image")):  # annotations only: no image bytes read here
        record = f"row {index} (image_id {short(example.get('image_id', index))})"
        if example["objects"] is None:
            report.problem(record, "malformed_record", "objects is missing")
            continue
        triples = [(bbox, label_for(cat, names, known_classes), cat) for bbox, cat in iter_bbox_category(example["objects"])]
        declared = (example.get("width"), example.get("height"))
        pending.append(PendingRecord(record, str(example.get("image_id", index)), declared, triples, options.bbox_format, row=index))
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
