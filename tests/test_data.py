"""Loading hub-layout detection datasets into the project's schema."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Sequence, Value
from PIL import Image as PILImage

from helpers.data import clean_box, dataset_class_names, load_detection_splits, load_hf_detection_split, to_xyxy_px
from helpers.schema import DETECTION_FEATURES


@pytest.mark.parametrize(
    "bbox,fmt,expected",
    [([10, 20, 30, 40], "xywh", [10, 20, 40, 60]), ([10, 20, 30, 40], "xyxy", [10, 20, 30, 40])],
)
def test_to_xyxy_px(bbox, fmt, expected):
    assert to_xyxy_px(bbox, fmt) == expected


def test_to_xyxy_px_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown bbox_format 'cxcywh'"):
        to_xyxy_px([1, 2, 3, 4], "cxcywh")


@pytest.mark.parametrize(
    "box,expected,status",
    [
        ([10, 10, 50, 50], [10, 10, 50, 50], "ok"),
        ([-5, 10, 120, 50], [0, 10, 100, 50], "clipped"),
        ([50, 10, 40, 50], None, "inverted"),
        ([10, 10, 10, 50], None, "degenerate"),
        ([150, 10, 200, 50], None, "degenerate"),  # entirely outside the 100x80 image
    ],
)
def test_clean_box(box, expected, status):
    assert clean_box(box, width=100, height=80) == (expected, status)


def _hub_layout_dataset(objects_feature) -> Dataset:
    """Two images in the common hub layout: objects.bbox (COCO xywh) + objects.category."""
    features = Features({"image_id": Value("int64"), "image": Image(), "objects": objects_feature})
    image = PILImage.new("RGB", (100, 80), "white")
    rows = [
        {"image_id": 7, "image": image, "objects": {"bbox": [[10, 10, 20, 20], [90, 70, 30, 30]], "category": [0, 1]}},
        {"image_id": 8, "image": image, "objects": {"bbox": [[5, 5, 0, 10]], "category": [1]}},
    ]
    if isinstance(objects_feature, List):
        rows = [r | {"objects": [dict(zip(r["objects"], v)) for v in zip(*r["objects"].values())]} for r in rows]
    return Dataset.from_list(rows, features=features)


@pytest.mark.parametrize(
    "objects_feature",
    [
        Sequence({"bbox": Sequence(Value("float32"), length=4), "category": ClassLabel(names=["cat", "dog"])}),
        List({"bbox": List(Value("float32"), length=4), "category": ClassLabel(names=["cat", "dog"])}),
    ],
)
def test_hub_layout_loads_with_fixes_counted(tmp_path, objects_feature):
    DatasetDict({"train": _hub_layout_dataset(objects_feature)}).save_to_disk(tmp_path / "ds")
    ds, report = load_hf_detection_split(str(tmp_path / "ds"), "train", "xywh")
    assert ds.features == DETECTION_FEATURES
    assert ds["image_id"] == [7, 8]
    assert ds[0]["objects"] == [
        {"label": "cat", "bbox_xyxy_px": [10, 10, 30, 30]},
        {"label": "dog", "bbox_xyxy_px": [90, 70, 100, 80]},  # clipped to the image
    ]
    assert ds[1]["objects"] == []  # the zero-width box is skipped
    assert dict(report) == {"ok": 1, "clipped": 1, "degenerate": 1, "images": 2}
    assert dataset_class_names(ds) == ["cat", "dog"]


def test_missing_columns_name_the_source(tmp_path):
    Dataset.from_dict({"text": ["a"]}).save_to_disk(tmp_path / "plain")
    with pytest.raises(ValueError, match="expected columns 'image' and 'objects'"):
        load_hf_detection_split(str(tmp_path / "plain"), "train", "xywh")


def test_synthetic_splits_are_disjoint_and_sized():
    splits, reports = load_detection_splits(
        "synthetic", {"train": "train", "eval": "validation", "test": "test"}, {"train": 6, "eval": 3, "test": 4}, "xywh", 5, {}
    )
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 6, "eval": 3, "test": 4}
    assert splits["train"]["objects"][:3] != splits["eval"]["objects"]
    assert reports["test"]["images"] == 4


def test_synthetic_split_of_size_zero_is_an_error():
    with pytest.raises(ValueError, match="test_size must be >= 1"):
        load_detection_splits("synthetic", {"test": "test"}, {"test": 0}, "xywh", 0, {})
