"""Real exports' quirks: COCO crowds as ignore regions, malformed files, escaping paths, special files, negatives."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random

import pytest
from PIL import Image as PILImage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers.families.boxes import resized_size, to_model_answer
from helpers.data.report import DataError
from helpers.data.records import ImageLoading, SplitOptions
from helpers.data.coco import load_coco_split
from helpers.data.sources import load_detection_splits
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.evaluate.metrics import MAP_50, MAP_50_95, MAP_75, summarize_detections
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import get_family
from helpers.data.sources import LoadOptions



def base_coco() -> dict:
    """Three 100x80 images, two classes, crowds on two of them."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2, 3)]
    boxes = [  # image, xywh, category, iscrowd
        (1, [10, 10, 20, 20], 1, 0), (1, [50, 10, 30, 30], 2, 0), (1, [0, 50, 40, 28], 1, 1),
        (2, [5, 5, 30, 40], 2, 0), (2, [60, 20, 30, 50], 2, 1),
        (3, [20, 20, 40, 40], 1, 0),
    ]
    annotations = [{"id": i + 1, "image_id": img, "bbox": bbox, "category_id": cat, "iscrowd": crowd, "area": bbox[2] * bbox[3]}
                   for i, (img, bbox, cat, crowd) in enumerate(boxes)]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def write_coco(root, coco) -> tuple:
    """The split folder with its images and ``annotations.json``; returns (annotation file, image folder)."""
    split = root / "train"
    split.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        if not (split / f"{i}.png").exists():
            PILImage.new("RGB", (100, 80), "white").save(split / f"{i}.png")
    (split / "annotations.json").write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return split / "annotations.json", split


# Detections (image, xywh, category, score): hits, misses, and detections on crowd regions.
DETECTIONS = [
    (1, [11, 10, 20, 20], 1, 0.9), (1, [50, 12, 30, 28], 2, 0.8), (1, [2, 52, 30, 25], 1, 0.95), (1, [60, 60, 10, 10], 1, 0.3),
    (2, [5, 6, 30, 40], 2, 0.7), (2, [62, 25, 25, 40], 2, 0.99), (2, [65, 30, 20, 20], 2, 0.85),
    (3, [20, 22, 38, 40], 1, 0.6), (3, [70, 10, 20, 20], 2, 0.5),
]


def official_coco_eval(coco: dict) -> list[float]:
    """mAP@[.5:.95], @.5 and @.75 from pycocotools on the file as written."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = copy.deepcopy(coco)
        truth.createIndex()
        results = truth.loadRes([{"image_id": i, "bbox": b, "category_id": c, "score": s} for i, b, c, s in DETECTIONS])
        evaluation = COCOeval(truth, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(v) for v in evaluation.stats[:3]]


def our_metrics(split, keep_crowds: bool = True) -> list[float]:
    """The same detections scored by helpers.evaluate.metrics on the loaded split."""
    names = {1: "cat", 2: "dog"}
    records = []
    for record in split:
        predictions = [{"label": names[c], "bbox_xyxy_px": [x, y, x + w, y + h], "score": s}
                       for i, (x, y, w, h), c, s in DETECTIONS if str(i) == record["image_id"]]
        records.append({"ground_truth": record["objects"], "crowd_regions": record["crowd_regions"] if keep_crowds else [],
                        "predictions": predictions, "raw_text": "x"})
    metrics = summarize_detections(records, ["cat", "dog"])
    return [metrics[MAP_50_95], metrics[MAP_50], metrics[MAP_75]]


def test_crowd_regions_are_ignore_regions_so_map_equals_official_cocoeval(tmp_path):
    coco = base_coco()
    split, report = load_coco_split(*write_coco(tmp_path, coco))
    assert report.counts["crowd_regions_kept"] == 2
    assert all(obj not in record["crowd_regions"] for record in split for obj in record["objects"])
    official = official_coco_eval(coco)
    assert our_metrics(split) == pytest.approx(official, abs=1e-12)
    assert our_metrics(split, keep_crowds=False) != pytest.approx(official)  # dropping crowds makes detections on them false positives


def test_grounding_keeps_each_class_crowd_regions(tmp_path):
    from helpers.families.chat import expand_for_grounding

    split, _ = load_coco_split(*write_coco(tmp_path, base_coco()))
    grounded = {record["image_id"]: record["crowd_regions"] for record in expand_for_grounding(split)}
    assert grounded["1/cat"] == [{"label": "cat", "bbox_xyxy_px": [0, 50, 40, 78]}]
    assert grounded["1/dog"] == [] and grounded["2/dog"] == [{"label": "dog", "bbox_xyxy_px": [60, 20, 90, 70]}]


def mutate(path: list, value):
    """A mutation setting the value at ``path`` (keys and indices) in the base file."""
    def apply(coco: dict) -> dict:
        target = coco
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return coco
    return apply


def append(key: str, value):
    """A mutation appending ``value`` to the list under ``key``."""
    return lambda coco: coco | {key: [*coco[key], value]}


@pytest.mark.parametrize(
    "change,expected",
    [
        (append("images", 5), {"malformed_record": 1}),  # not a dict
        (mutate(["images", 0, "id"], [1]), {"malformed_record": 1, "orphan_annotation": 3}),  # unhashable id
        (mutate(["images", 0, "id"], {"a": 1}), {"malformed_record": 1, "orphan_annotation": 3}),
        (mutate(["images", 0, "id"], True), {"malformed_record": 1, "orphan_annotation": 3}),
        (mutate(["images", 0, "file_name"], None), {"malformed_record": 1, "orphan_annotation": 3}),
        (append("images", {"id": 1, "file_name": "2.png", "width": 100, "height": 80}), {"duplicate_image_id": 2}),
        (append("annotations", "x"), {"malformed_annotation": 1}),
        (append("annotations", {"image_id": [1], "bbox": [1, 1, 5, 5], "category_id": 1}), {"malformed_annotation": 1}),
        (append("annotations", {"image_id": 1, "bbox": [1, 1, 5, 5], "category_id": 1, "iscrowd": 2}), {"malformed_annotation": 1}),
        (append("annotations", {"image_id": 99, "bbox": [1, 1, 5, 5], "category_id": 1}), {"orphan_annotation": 1}),
        (append("annotations", {"image_id": 1, "bbox": [1, 1, 5, 5], "category_id": [1]}), {"unknown_category": 1}),
        (append("annotations", {"image_id": 1, "bbox": [[1], 1, 5, 5], "category_id": 1}), {"malformed_box": 1}),
        (append("annotations", {"image_id": 1, "bbox": [1e308, 1, 1e308, 5], "category_id": 1}), {"outside_box": 1}),
        (append("categories", "cat"), {"malformed_category": 1}),
        (mutate(["categories", 0, "name"], 7), {"malformed_category": 1, "unknown_category": 3}),  # a crowd region too
        (mutate(["images", 0, "width"], [100]), {"size_mismatch": 1}),
        (mutate(["images", 0, "file_name"], "../1.png"), {"path_outside_dataset": 1}),
        (mutate(["images", 0, "file_name"], "sub/../../1.png"), {"path_outside_dataset": 1}),
        (mutate(["images", 0, "file_name"], "/etc/hostname"), {"path_outside_dataset": 1}),
        (mutate(["images", 0, "file_name"], "zero.png"), {"not_a_file": 1}),  # a link to /dev/zero
        (mutate(["images", 0, "file_name"], "fifo.png"), {"not_a_file": 1}),
        (mutate(["images", 0, "file_name"], "folder.png"), {"not_a_file": 1}),
        (mutate(["images", 0, "file_name"], "thin.png"), {"extreme_aspect_ratio": 1}),
        (mutate(["images", 0, "file_name"], "link/1.png"), {}),  # a link the user placed inside the folder is followed
    ],
)
def test_malformed_coco_entries_are_counted_skips_naming_the_record(tmp_path, change, expected):
    annotation_file, split = write_coco(tmp_path, change(base_coco()))
    os.symlink("/dev/zero", split / "zero.png")
    os.mkfifo(split / "fifo.png")
    (split / "folder.png").mkdir()
    PILImage.new("RGB", (1000, 4)).save(split / "thin.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    PILImage.new("RGB", (100, 80)).save(outside / "1.png")
    os.symlink(outside, split / "link")
    _, report = load_coco_split(annotation_file, split)
    problems = {kind: n for kind, n in report.counts.items() if n and kind not in KEPT}
    assert problems == expected
    if expected:
        with pytest.raises(DataError, match="Fix: "):
            load_coco_split(annotation_file, split, SplitOptions(strict=True))


KEPT = {"images_loaded", "images_without_objects", "boxes_kept", "crowd_regions_kept"}


@pytest.mark.parametrize(
    "text,message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[]", "needs 'images' and 'annotations' lists"),
        ('{"images": {}, "annotations": []}', "needs 'images' and 'annotations' lists"),
        ('{"images": [], "annotations": [], "categories": {}}', "'categories' must be a list"),
        ("{not json", "not a readable COCO JSON file"),
        ("\udcff", "not a readable COCO JSON file"),
    ],
)
def test_unusable_coco_files_are_data_errors_naming_the_file(tmp_path, text, message):
    annotation_file, split = write_coco(tmp_path, "{}")
    annotation_file.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError, match=message) as error:
        load_coco_split(annotation_file, split)
    assert str(annotation_file) in str(error.value)


JUNK = [None, True, -1, 0, 1.5, 1e308, "", "x", "../1.png", [], {}, [1, 2], {"id": 1}, [[[]]], {"a": {"b": []}}, [None] * 4,
        "1.png", [1, 1, 5, 5], {"id": [1]}]


def random_mutation(rng: random.Random, coco: dict) -> dict:
    """Replace, delete, duplicate or deeply nest one random node of the file."""
    parents = []

    def walk(node, depth: int):
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            parents.append((node, key))
            if depth < 6:  # a COCO file's structure is 4 deep; below that lie earlier mutations' nests
                walk(child, depth + 1)

    walk(coco, 0)
    node, key = rng.choice(parents)
    action = rng.random()
    if action < 0.6:
        node[key] = copy.deepcopy(rng.choice(JUNK))
    elif action < 0.75 and isinstance(node, dict):
        del node[key]
    elif action < 0.9 and isinstance(node, list):
        node.append(copy.deepcopy(node[key]))  # a duplicate entry
    else:
        nested = rng.choice(JUNK)
        for _ in range(rng.choice([3, 50, 5000])):
            nested = [nested]
        node[key] = nested
    return coco


def test_1500_random_malformed_coco_files_never_crash_the_loader(tmp_path):
    annotation_file, split = write_coco(tmp_path, base_coco())
    rng = random.Random(0)
    outcomes = {"loaded": 0, "data_error": 0}
    for _ in range(1500):
        coco = base_coco()
        for _ in range(rng.choice([1, 1, 2, 3])):
            coco = random_mutation(rng, coco)
        try:
            text = json.dumps(coco)
        except RecursionError:
            text = "[" * 100_000 + "]" * 100_000
        annotation_file.write_text(text)
        try:
            load_coco_split(annotation_file, split, SplitOptions(loading=ImageLoading(workers=1)))
            outcomes["loaded"] += 1
        except DataError:
            outcomes["data_error"] += 1
    assert outcomes["loaded"] > 1000 and outcomes["data_error"] > 10, outcomes


def test_images_without_objects_are_kept_and_trained_with_the_empty_answer(tmp_path):
    coco = base_coco()
    coco["annotations"] = [ann for ann in coco["annotations"] if ann["image_id"] != 3]
    split, report = load_coco_split(*write_coco(tmp_path, coco))
    assert split["image_id"] == ["1", "2", "3"] and split[2]["objects"] == []
    assert report.counts["images_without_objects"] == 1
    # The empty answer each syntax can write: JSON's empty list, and for Qwen2-VL's tags no tag at all.
    assert to_model_answer([], get_family("qwen2_5_vl"), (100, 80), resized_size(get_family("qwen2_5_vl"), 100, 80, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)) == "[]"
    assert to_model_answer([], get_family("qwen2_vl"), (100, 80), (100, 80)) == ""


def test_predictions_on_an_image_without_objects_are_false_positives():
    hit = {"ground_truth": [{"label": "cat", "bbox_xyxy_px": [0, 0, 10, 10]}], "raw_text": "x",
           "predictions": [{"label": "cat", "bbox_xyxy_px": [0, 0, 10, 10], "score": 0.5}]}
    empty = {"ground_truth": [], "raw_text": "x", "predictions": [{"label": "cat", "bbox_xyxy_px": [0, 0, 10, 10], "score": 0.9}]}
    assert summarize_detections([hit])[MAP_50] == pytest.approx(1.0)
    assert summarize_detections([hit, empty])[MAP_50] < 0.6  # the higher-scored false positive comes first
    assert summarize_detections([hit, {**empty, "predictions": []}])[MAP_50] == pytest.approx(1.0)


def test_synthetic_empty_fraction_adds_images_without_objects_and_leaves_the_others_alone():
    plain = make_synthetic_dataset(40, seed=3)
    mixed = make_synthetic_dataset(40, seed=3, empty_fraction=0.3)
    empty = [i for i, objects in enumerate(mixed["objects"]) if not objects]
    assert 4 <= len(empty) <= 20
    kept = [i for i in range(40) if i not in empty]
    assert [mixed[i]["objects"] for i in kept] == [plain[i]["objects"] for i in kept]
    assert [mixed[i]["image"] for i in kept] == [plain[i]["image"] for i in kept]
    with pytest.raises(ValueError, match="empty_fraction"):
        make_synthetic_dataset(2, seed=0, empty_fraction=1.5)


def test_a_negative_split_size_is_refused():
    with pytest.raises(ValueError, match="train_size must be >= 0"):
        load_detection_splits("synthetic", {"train": "train"}, {"train": -1}, LoadOptions(bbox_format="xywh"))
