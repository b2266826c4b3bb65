"""Loading detection data from every source into one schema, with every bad record counted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Sequence, Value
from PIL import Image as PILImage

from helpers.data.report import DataError, format_data_report
from helpers.data.records import clean_box, SplitOptions, to_xyxy_px
from helpers.data.sources import dataset_class_names, detect_source_kind, load_detection_splits
from helpers.data.hub import load_hf_detection_split
from helpers.families.boxes import is_box_of_numbers
from helpers.data.images import open_image
from helpers.data.schema import DETECTION_FEATURES
from helpers.data.sources import LoadOptions

SPLITS = {"train": "train", "eval": "valid", "test": "test"}


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
        ([10, 10, 100.4, 50], [10, 10, 100, 50], "ok"),  # float noise at the border: clipped, not a problem
        ([-5, 10, 120, 50], [0, 10, 100, 50], "clipped_box"),
        ([50, 10, 40, 50], None, "inverted_box"),
        ([10, 10, 10, 50], None, "degenerate_box"),  # zero width
        ([99.5, 10, 130, 50], None, "degenerate_box"),  # half a pixel left after clipping
        ([150, 10, 200, 50], None, "outside_box"),
        ([100, 10, 120, 50], None, "outside_box"),  # touches the right border from outside
        ([-30, -30, 0, 0], None, "outside_box"),
    ],
)
def test_clean_box(box, expected, status):
    assert clean_box(box, width=100, height=80) == (expected, status)


@pytest.mark.parametrize(
    "bbox,ok",
    [([1, 2, 3, 4], True), ([1.5, 2, 3, 4.25], True), ([1, 2, 3], False), ([1, 2, 3, float("nan")], False),
     ([1, 2, 3, float("inf")], False), ([True, 2, 3, 4], False), (["1", 2, 3, 4], False), (None, False), ("1,2,3,4", False)],
)
def test_is_box_of_numbers(bbox, ok):
    assert is_box_of_numbers(bbox) is ok


# ---------------------------------------------------------------- files the tests build


def save_image(path: Path, size=(100, 80), color="white", mode="RGB", exif_orientation: int | None = None) -> Path:
    """Write an image file (format from the suffix), optionally with an EXIF orientation tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PILImage.new(mode, size, color)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = PILImage.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif.tobytes())
    return path


def rotated_jpeg(path: Path) -> Path:
    """A 60x40 JPEG stored sideways: left half red, EXIF orientation 6 shows it as 40x60, red on top."""
    image = PILImage.new("RGB", (60, 40), "blue")
    image.paste((255, 0, 0), (0, 0, 30, 40))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def broken_files(folder: Path) -> None:
    """A file that is not an image and a truncated JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.png").write_bytes(b"this is not an image")
    buffer = io.BytesIO()
    PILImage.new("RGB", (100, 80), "green").save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:200])


def make_coco_folder(root: Path) -> Path:
    """A COCO folder with a clean ``valid`` split and a ``train`` split holding every kind of bad record."""
    split_dir = root / "train"
    save_image(split_dir / "good.png")
    rotated_jpeg(split_dir / "rotated.jpg")
    save_image(split_dir / "gray.png", mode="L", color=128)
    broken_files(split_dir)
    save_image(split_dir / "small.png", size=(50, 50))
    images = [
        {"id": 1, "file_name": "good.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "rotated.jpg", "width": 40, "height": 60},  # sizes of the upright image
        {"id": 3, "file_name": "gray.png", "width": 100, "height": 80},
        {"id": 4, "file_name": "missing.png", "width": 100, "height": 80},
        {"id": 5, "file_name": "garbage.png", "width": 100, "height": 80},
        {"id": 6, "file_name": "truncated.jpg", "width": 100, "height": 80},
        {"id": 7, "file_name": "small.png", "width": 100, "height": 80},  # the file is 50x50
        {"id": 8, "width": 100, "height": 80},  # no file_name
        {"file_name": "good.png", "width": 100, "height": 80},  # no id
    ]
    boxes = [
        (1, [10, 10, 20, 20], 1, 0),  # ok
        (1, [90, 70, 30, 30], 2, 0),  # clipped
        (1, [50, 10, -20, 10], 1, 0),  # inverted (negative width)
        (1, [10, 10, 0, 10], 1, 0),  # zero area
        (1, [150, 10, 20, 20], 1, 0),  # outside
        (1, [10, 10, 20, 20], 99, 0),  # unknown category
        (1, [10, 10, 20, 20], 1, 1),  # crowd
        (1, [10, 10, 20], 1, 0),  # malformed
        (2, [0, 0, 40, 30], 1, 0),  # ok, on the upright (red) half
        (3, [5, 5, 10, 10], 2, 0),  # ok
        (999, [1, 1, 5, 5], 1, 0),  # orphan
    ]
    annotations = [
        {"id": i, "image_id": img, "bbox": bbox, "category_id": cat, "iscrowd": crowd, "area": 1}
        for i, (img, bbox, cat, crowd) in enumerate(boxes)
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (split_dir / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    valid_dir = root / "valid"
    save_image(valid_dir / "a.png")
    valid = {
        "images": [{"id": 10, "file_name": "a.png", "width": 100, "height": 80}],
        "annotations": [{"id": 0, "image_id": 10, "bbox": [1, 2, 30, 40], "category_id": 2, "iscrowd": 0}],
        "categories": categories,
    }
    (valid_dir / "_annotations.coco.json").write_text(json.dumps(valid))  # the Roboflow export name
    return root


COCO_TRAIN_COUNTS = {
    "images_loaded": 3, "images_without_objects": 0, "boxes_kept": 4,
    "missing_image": 1, "unreadable_image": 2, "size_mismatch": 1, "malformed_record": 2,
    "clipped_box": 1, "inverted_box": 1, "degenerate_box": 1, "outside_box": 1, "unknown_category": 1,
    "crowd_regions_kept": 1, "malformed_box": 1, "orphan_annotation": 1,
}


def make_jsonl_folder(root: Path, bbox_key: str = "bbox") -> Path:
    """``train.jsonl`` with every kind of bad line and ``test.jsonl`` clean; boxes in xyxy."""
    save_image(root / "images" / "good.png")
    rotated_jpeg(root / "images" / "rotated.jpg")
    broken_files(root / "images")
    lines = [
        {"image": "images/good.png", "image_id": "a", "objects": [
            {"label": "cat", bbox_key: [10, 10, 30, 30]},  # ok
            {"label": "dog", bbox_key: [-10, 10, 30, 30]},  # clipped
            {"label": "cat", bbox_key: [30, 10, 10, 30]},  # inverted
            {"label": "cat", bbox_key: [10, 10, 10, 30]},  # zero area
            {"label": "cat", bbox_key: [110, 10, 130, 30]},  # outside
            {"label": "zebra", bbox_key: [10, 10, 30, 30]},  # not in the known classes
            {"label": "", bbox_key: [10, 10, 30, 30]},  # no label
            {"label": "cat", bbox_key: [10, 10, "x", 30]},  # malformed
        ]},
        {"image": "images/rotated.jpg", "objects": [{"label": "dog", bbox_key: [0, 0, 40, 30]}]},
        {"image": "images/good.png", "objects": []},  # an image with no objects is valid
        {"image": "images/missing.png", "objects": []},
        {"image": "images/garbage.png", "objects": []},
        {"image": "images/truncated.jpg", "objects": []},
        {"image": "images/good.png", "width": 80, "height": 100, "objects": []},  # size mismatch
        {"objects": []},  # no image
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n\n"
    (root / "train.jsonl").write_text(text)
    (root / "test.jsonl").write_text(json.dumps({"image": "images/good.png", "objects": [{"label": "dog", bbox_key: [1, 2, 3, 4]}]}))
    (root / "valid.jsonl").write_text((root / "test.jsonl").read_text())
    return root


JSONL_TRAIN_COUNTS = {
    "images_loaded": 3, "images_without_objects": 1, "boxes_kept": 3,
    "missing_image": 1, "unreadable_image": 2, "size_mismatch": 1, "malformed_record": 2,
    "clipped_box": 1, "inverted_box": 1, "degenerate_box": 1, "outside_box": 1, "unknown_category": 2, "malformed_box": 1,
}


def load(source, **kwargs):
    """Load the three splits of a test source with all images."""
    return load_detection_splits(str(source), SPLITS, {"train": 0, "eval": 0, "test": 0}, LoadOptions(bbox_format=kwargs.pop("bbox_format", "xyxy"), **kwargs))


# ---------------------------------------------------------------- COCO


def test_coco_folder_counts_every_bad_record(tmp_path):
    make_coco_folder(tmp_path / "coco")
    (tmp_path / "coco" / "test").mkdir()
    (tmp_path / "coco" / "test" / "annotations.json").write_text((tmp_path / "coco" / "valid" / "_annotations.coco.json").read_text())
    save_image(tmp_path / "coco" / "test" / "a.png")
    splits, reports = load(tmp_path / "coco")
    train = splits["train"]
    assert train.features == DETECTION_FEATURES
    assert {k: v for k, v in reports["train"].counts.items() if v} == {k: v for k, v in COCO_TRAIN_COUNTS.items() if v}
    assert train["image_id"] == ["1", "2", "3"]
    assert train[0]["objects"] == [
        {"label": "cat", "bbox_xyxy_px": [10, 10, 30, 30]},
        {"label": "dog", "bbox_xyxy_px": [90, 70, 100, 80]},
    ]
    assert open_image(train[2]["image"]).mode == "RGB"  # the grayscale file is converted when a batch reads it
    assert train[0]["crowd_regions"] == [{"label": "cat", "bbox_xyxy_px": [10, 10, 30, 30]}]  # kept aside, never a target
    assert splits["eval"][0]["objects"] == [{"label": "dog", "bbox_xyxy_px": [1, 2, 31, 42]}]
    messages = "\n".join(reports["train"].examples)
    for record in ("image id 4 ('missing.png')", "image id 5 ('garbage.png')", "image id 1 ('good.png') box 2", "annotation 10"):
        assert record in messages
    assert dataset_class_names(train) == ["cat", "dog"]


def test_exif_orientation_is_applied_so_boxes_match_the_upright_image(tmp_path):
    make_coco_folder(tmp_path / "coco")
    splits, _ = load_detection_splits(str(tmp_path / "coco"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh"))
    rotated = splits["train"][1]
    image = open_image(rotated["image"])
    assert (rotated["width"], rotated["height"]) == (40, 60) == image.size
    red, green, blue = image.getpixel((20, 15))  # inside the box [0, 0, 40, 30]: the red half
    assert red > 200 and blue < 60
    assert image.getpixel((20, 45))[2] > 200  # below the box: blue


def test_splits_hold_file_references_not_pixels(tmp_path):
    make_coco_folder(tmp_path / "coco")
    splits, _ = load_detection_splits(str(tmp_path / "coco"), {"train": "train"}, {"train": 1}, LoadOptions(bbox_format="xywh"))
    assert splits["train"][0]["image"] == {"bytes": None, "path": str(tmp_path / "coco" / "train" / "good.png")}


# ---------------------------------------------------------------- JSONL


@pytest.mark.parametrize("bbox_key", ["bbox", "bbox_xyxy_px"])
def test_jsonl_folder_counts_every_bad_record(tmp_path, bbox_key):
    make_jsonl_folder(tmp_path / "jsonl", bbox_key)
    splits, reports = load(tmp_path / "jsonl", known_classes=["cat", "dog"])
    assert {k: v for k, v in reports["train"].counts.items() if v} == {k: v for k, v in JSONL_TRAIN_COUNTS.items() if v}
    assert splits["train"]["image_id"] == ["a", "images/rotated.jpg", "images/good.png"]
    assert splits["train"][0]["objects"] == [
        {"label": "cat", "bbox_xyxy_px": [10, 10, 30, 30]},
        {"label": "dog", "bbox_xyxy_px": [0, 10, 30, 30]},
    ]
    messages = "\n".join(reports["train"].examples)
    for record in ("line 4 ('images/missing.png')", "line 9", "line 1 ('images/good.png') box 5", "'zebra'"):
        assert record in messages


def test_jsonl_bbox_format_xywh(tmp_path):
    make_jsonl_folder(tmp_path / "jsonl")
    splits, _ = load(tmp_path / "jsonl", bbox_format="xywh")
    assert splits["test"][0]["objects"] == [{"label": "dog", "bbox_xyxy_px": [1, 2, 4, 6]}]


# ---------------------------------------------------------------- Hugging Face layout


def _hub_layout_dataset(objects_feature) -> Dataset:
    """Hub-layout rows (objects.bbox in COCO xywh + objects.category) with bad records."""
    features = Features(
        {"image_id": Value("int64"), "image": Image(), "width": Value("int32"), "height": Value("int32"), "objects": objects_feature}
    )
    image = PILImage.new("RGB", (100, 80), "white")
    rows = [
        {"image_id": 7, "image": image, "width": 100, "height": 80,
         "objects": {"bbox": [[10, 10, 20, 20], [90, 70, 30, 30], [1, 1, 5, float("nan")]], "category": [0, 1, 0]}},
        {"image_id": 8, "image": image, "width": 100, "height": 80, "objects": {"bbox": [[5, 5, 0, 10], [1, 1, 5, 5]], "category": [0, 1]}},
        {"image_id": 9, "image": None, "width": 100, "height": 80, "objects": {"bbox": [], "category": []}},
        {"image_id": 10, "image": {"bytes": b"not an image", "path": None}, "width": 100, "height": 80, "objects": {"bbox": [], "category": []}},
        {"image_id": 11, "image": image, "width": 640, "height": 480, "objects": {"bbox": [], "category": []}},
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
    ds, report = load_hf_detection_split(str(tmp_path / "ds"), SplitOptions(bbox_format="xywh", known_classes={"cat"}, split="train"))
    assert ds.features == DETECTION_FEATURES
    assert ds["image_id"] == ["7", "8"]
    assert ds[0]["objects"] == [{"label": "cat", "bbox_xyxy_px": [10, 10, 30, 30]}]
    assert ds[1]["objects"] == []
    assert {k: v for k, v in report.counts.items() if v} == {
        "images_loaded": 2, "images_without_objects": 1, "boxes_kept": 1, "malformed_box": 1, "unknown_category": 2,
        "degenerate_box": 1, "missing_image": 1, "unreadable_image": 1, "size_mismatch": 1,
    }


def test_missing_columns_name_the_source(tmp_path):
    Dataset.from_dict({"text": ["a"]}).save_to_disk(tmp_path / "plain")
    with pytest.raises(DataError, match="expected columns 'image' and 'objects'"):
        load_hf_detection_split(str(tmp_path / "plain"), SplitOptions(bbox_format="xywh", split="train"))


# ---------------------------------------------------------------- strict mode, sources, reports


@pytest.mark.parametrize(
    "kind,source_maker,record,fix",
    [
        ("coco", make_coco_folder, "image id 8 (None)", "give the record an image"),  # image entries are checked first
        ("jsonl", make_jsonl_folder, "line 8", "give the record an image"),  # then every line's layout, before any image
    ],
)
def test_strict_mode_stops_at_the_first_problem_naming_record_and_fix(tmp_path, kind, source_maker, record, fix):
    source_maker(tmp_path / kind)
    with pytest.raises(DataError, match=f"Fix: {fix}") as error:
        load_detection_splits(str(tmp_path / kind), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh", strict=True))
    assert record in str(error.value)


@pytest.mark.parametrize(
    "layout,kind",
    [
        ("train/annotations.json", "coco"),
        ("valid/_annotations.coco.json", "coco"),
        ("annotations/instances_train2017.json", "coco"),
        ("train.jsonl", "jsonl"),
        ("dataset_dict.json", "hf_disk"),
    ],
)
def test_source_kind_is_recognised_from_the_files(tmp_path, layout, kind):
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / layout).write_text("{}")
    assert detect_source_kind(str(tmp_path)) == kind


@pytest.mark.parametrize(
    "source,expected",
    [("synthetic", "synthetic"), ("rishitdagli/cppe-5", "hub")],
)
def test_source_kind_of_names(source, expected):
    assert detect_source_kind(source) == expected


def test_unknown_folder_and_missing_path_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no supported layout"):
        detect_source_kind(str(tmp_path))
    with pytest.raises(DataError, match="found none there"):
        detect_source_kind(str(tmp_path / "nope"))


@pytest.mark.parametrize("maker,message", [(make_coco_folder, "no COCO annotations for split 'test'"), (make_jsonl_folder, "no nope.jsonl")])
def test_missing_split_names_what_was_looked_for(tmp_path, maker, message):
    maker(tmp_path / "src")
    split = "test" if maker is make_coco_folder else "nope"
    with pytest.raises(DataError, match=message):
        load_detection_splits(str(tmp_path / "src"), {"test": split}, {"test": 0}, LoadOptions(bbox_format="xywh"))


def test_crowd_regions_are_kept_aside_and_never_an_error(tmp_path):
    save_image(tmp_path / "c" / "train" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 20, 20], "category_id": 1, "iscrowd": 0},
                            {"id": 2, "image_id": 1, "bbox": [30, 30, 20, 20], "category_id": 1, "iscrowd": 1}]}
    (tmp_path / "c" / "train" / "annotations.json").write_text(json.dumps(coco))
    splits, reports = load_detection_splits(str(tmp_path / "c"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh", strict=True))
    assert reports["train"].counts["crowd_regions_kept"] == 1 and len(splits["train"][0]["objects"]) == 1
    assert splits["train"][0]["crowd_regions"] == [{"label": "cat", "bbox_xyxy_px": [30, 30, 50, 50]}]


def test_home_relative_sources_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_jsonl_folder(tmp_path / "data")
    splits, _ = load_detection_splits("~/data", {"test": "test"}, {"test": 0}, LoadOptions(bbox_format="xyxy"))
    assert len(splits["test"]) == 1


def test_a_split_left_empty_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.jsonl").write_text(json.dumps({"image": "missing.png", "objects": []}))
    with pytest.raises(DataError, match="no usable images"):
        load_detection_splits(str(tmp_path / "src"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh"))


def test_max_images_caps_records_in_file_order(tmp_path):
    make_coco_folder(tmp_path / "coco")
    splits, reports = load_detection_splits(str(tmp_path / "coco"), {"train": "train"}, {"train": 2}, LoadOptions(bbox_format="xywh"))
    assert splits["train"]["image_id"] == ["1", "2"]
    assert reports["train"].counts["missing_image"] == 0


def test_report_table_and_json(tmp_path):
    make_jsonl_folder(tmp_path / "jsonl")
    _, reports = load(tmp_path / "jsonl")
    table = format_data_report(reports)
    assert "missing_image" in table and "(record skipped)" in table and "orphan_annotation" not in table
    assert json.loads(json.dumps(reports["train"].as_dict()))["counts"]["missing_image"] == 1


def test_synthetic_splits_are_disjoint_and_sized():
    splits, reports = load_detection_splits("synthetic", {"train": "train", "eval": "validation", "test": "test"}, {"train": 6, "eval": 3, "test": 4}, LoadOptions(bbox_format="xywh", seed=5))
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 6, "eval": 3, "test": 4}
    assert splits["train"]["objects"][:3] != splits["eval"]["objects"]
    assert reports["test"].counts["images_loaded"] == 4
    assert reports["test"].counts["boxes_kept"] == sum(len(o) for o in splits["test"]["objects"])


def test_synthetic_split_of_size_zero_is_an_error():
    with pytest.raises(ValueError, match="test_size must be >= 1"):
        load_detection_splits("synthetic", {"test": "test"}, {"test": 0}, LoadOptions(bbox_format="xywh"))


def test_hub_images_stay_encoded_in_arrow_files_on_disk(tmp_path):
    features = Sequence({"bbox": Sequence(Value("float32"), length=4), "category": ClassLabel(names=["cat", "dog"])})
    DatasetDict({"train": _hub_layout_dataset(features)}).save_to_disk(tmp_path / "ds")
    ds, _ = load_hf_detection_split(str(tmp_path / "ds"), SplitOptions(bbox_format="xywh", split="train"))
    assert ds.cache_files, "the split was copied into memory"
    assert ds[0]["image"]["bytes"][:4] == b"\x89PNG" and open_image(ds[0]["image"]).size == (100, 80)
