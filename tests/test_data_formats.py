"""YOLO and Pascal VOC folders as users have them: every layout, box convention and bad input, on folders written here.

Expected boxes are computed by hand in each case, never by the loader.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from helpers.data.records import SplitOptions
from helpers.data.report import DataError, format_data_report
from helpers.data.sources import LoadOptions, detect_source_kind, load_detection_splits
from helpers.data.voc import load_voc_split
from helpers.data.yolo import load_yolo_split

YOLO_TOLERANCE_PX = 0.05


def write_image(path: Path, width: int, height: int) -> None:
    """A plain PNG of the given size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 150)).save(path)


def write(path: Path, text: str) -> Path:
    """Write a text file, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def boxes(split) -> list[tuple[str, list[float]]]:
    """Every (label, box) of a loaded split, in record order."""
    return [(obj["label"], obj["bbox_xyxy_px"]) for objects in split["objects"] for obj in objects]


def assert_boxes(got: list, expected: list, tolerance: float) -> None:
    assert [label for label, _ in got] == [label for label, _ in expected]
    for (_, box), (_, want) in zip(got, expected):
        assert box == pytest.approx(want, abs=tolerance), (box, want)


# ---------------------------------------------------------------- YOLO

# (label line, image size, expected box by hand): a 200x100 image; cx cy w h are fractions of it.
YOLO_LINES = [
    ("0 0.5 0.5 0.2 0.4", (200, 100), ("cat", [80, 30, 120, 70])),  # centre (100, 50), 40x40
    ("1 0.25 0.75 0.5 0.5", (200, 100), ("dog", [0, 50, 100, 100])),
    ("1 0.1 0.2 0.02 0.04", (200, 100), ("dog", [18, 18, 22, 22])),
    ("0 0.1 0.2 0.5 0.2 0.3 0.8", (200, 100), ("cat", [20, 20, 100, 80])),  # a polygon: x 0.1..0.5, y 0.2..0.8
    ("0 0.5 0.5 1.0 1.0", (64, 48), ("cat", [0, 0, 64, 48])),
    ("0 1.005 0.5 0.01 0.2", (200, 100), ("cat", [199, 40, 200, 60])),  # within the tolerance: clipped to 1
]


@pytest.mark.parametrize("line,size,expected", YOLO_LINES, ids=[line for line, _, _ in YOLO_LINES])
@pytest.mark.parametrize("layout", ["ultralytics", "roboflow"])
def test_yolo_boxes_equal_a_hand_conversion(tmp_path, layout, line, size, expected):
    images, labels = (tmp_path / "images" / "train", tmp_path / "labels" / "train") if layout == "ultralytics" else (
        tmp_path / "train" / "images", tmp_path / "train" / "labels")
    write_image(images / "a.png", *size)
    write(labels / "a.txt", line + "\n")
    write(tmp_path / "data.yaml", "names: [cat, dog]\n")
    split, report = load_yolo_split(tmp_path, SplitOptions(split="train"))
    assert_boxes(boxes(split), [expected], YOLO_TOLERANCE_PX)
    assert (split[0]["width"], split[0]["height"]) == size and not report.examples


@pytest.mark.parametrize(
    "names_yaml", ["names: [cat, dog]\n", "names:\n  0: cat\n  1: dog\n", "nc: 2\nnames: ['cat', 'dog']\n"],
    ids=["list", "mapping", "with-nc"],
)
def test_yolo_class_names_come_from_the_yaml_in_its_order(tmp_path, names_yaml):
    write_image(tmp_path / "images" / "train" / "a.png", 100, 100)
    write(tmp_path / "labels" / "train" / "a.txt", "1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.4 0.4\n")
    write(tmp_path / "data.yaml", names_yaml)
    split, _ = load_yolo_split(tmp_path, SplitOptions(split="train"))
    assert [label for label, _ in boxes(split)] == ["dog", "cat"]


# (line, problem kind): each is counted and named with its file and line, and fatal under data_strict.
BAD_YOLO_LINES = [
    ("0 0.5 0.5 0.2", "malformed_label_line"),  # 3 coordinates
    ("0 0.1 0.2 0.3 0.4 0.5", "malformed_label_line"),  # 5: neither a box nor a polygon
    ("cat 0.5 0.5 0.2 0.2", "malformed_label_line"),  # a class name, not an id
    ("0 0.5 x 0.2 0.2", "malformed_label_line"),
    ("0 nan 0.5 0.2 0.2", "malformed_label_line"),
    ("0.5 0.5 0.5 0.2 0.2", "malformed_label_line"),  # a class id must be an integer
    ("2 0.5 0.5 0.2 0.2", "unknown_class_id"),  # names has 2 classes
    ("-1 0.5 0.5 0.2 0.2", "unknown_class_id"),
    ("0 1.5 0.5 0.2 0.2", "out_of_range_coordinates"),
    ("0 0.5 0.5 -0.2 0.2", "out_of_range_coordinates"),
    ("0 150 50 40 40", "out_of_range_coordinates"),  # pixels where fractions belong
]


@pytest.mark.parametrize("line,kind", BAD_YOLO_LINES, ids=[line for line, _ in BAD_YOLO_LINES])
def test_a_bad_yolo_line_is_counted_with_its_file_and_line(tmp_path, line, kind):
    write_image(tmp_path / "images" / "train" / "a.png", 100, 100)
    label_file = write(tmp_path / "labels" / "train" / "a.txt", f"0 0.5 0.5 0.2 0.2\n\n{line}\n")
    write(tmp_path / "data.yaml", "names: [cat, dog]\n")
    split, report = load_yolo_split(tmp_path, SplitOptions(split="train"))
    assert report.counts[kind] == 1 and len(boxes(split)) == 1  # the good line stays
    assert f"{label_file}:3" in report.examples[0]
    with pytest.raises(DataError, match=f"{label_file}:3"):
        load_yolo_split(tmp_path, SplitOptions(split="train", strict=True))


def test_yolo_images_without_labels_are_negatives_and_stray_labels_are_counted(tmp_path):
    for name in ("boxed", "empty", "unlabelled"):
        write_image(tmp_path / "images" / "train" / f"{name}.png", 50, 40)
    write(tmp_path / "labels" / "train" / "boxed.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "labels" / "train" / "empty.txt", "")
    write(tmp_path / "labels" / "train" / "stray.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "data.yaml", "names: [cat]\n")
    split, report = load_yolo_split(tmp_path, SplitOptions(split="train"))
    assert len(split) == 3 and report.counts["images_without_objects"] == 2
    assert report.counts["images_without_label_file"] == 1 and report.counts["orphan_label_file"] == 1


def test_roboflow_valid_split_is_read_for_validation_and_said(tmp_path):
    write_image(tmp_path / "valid" / "images" / "a.jpg", 60, 60)
    write(tmp_path / "valid" / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "data.yaml", "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['cat']\n")
    split, report = load_yolo_split(tmp_path, SplitOptions(split="validation"))
    assert len(split) == 1 and report.notes == ["split 'validation' read from the folder's 'valid'"]
    assert "validation: split 'validation' read from the folder's 'valid'" in format_data_report({"validation": report})


def test_yolo_yaml_keys_point_to_image_folders_inside_the_dataset(tmp_path):
    write_image(tmp_path / "data" / "images" / "fold1" / "a.png", 80, 40)
    write(tmp_path / "data" / "labels" / "fold1" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "coco8.yaml", "path: /home/someone/datasets/coco8\ntrain: data/images/fold1\nnames: {0: cat}\n")
    split, _ = load_yolo_split(tmp_path, SplitOptions(split="train"))
    assert_boxes(boxes(split), [("cat", [20, 10, 60, 30])], YOLO_TOLERANCE_PX)
    write(tmp_path / "coco8.yaml", "train: ../elsewhere/images\nnames: {0: cat}\n")
    with pytest.raises(DataError, match="is not a folder inside the dataset folder"):
        load_yolo_split(tmp_path, SplitOptions(split="train"))


@pytest.mark.parametrize(
    "names_yaml", ["names: cat\n", "names: {cat: 0}\n", "names: [cat, 3]\n"], ids=["string", "name-to-id", "not-a-name"],
)
def test_bad_class_names_stop_with_the_yaml_named(tmp_path, names_yaml):
    write_image(tmp_path / "images" / "train" / "a.png", 10, 10)
    write(tmp_path / "data.yaml", names_yaml)
    with pytest.raises(DataError, match="data.yaml: 'names' must be a list of class names or a mapping"):
        load_yolo_split(tmp_path, SplitOptions(split="train"))


# ---------------------------------------------------------------- Pascal VOC


def voc_xml(filename: str, size: tuple | None, objects: list[tuple], path: str = "", extra: str = "") -> str:
    """A Pascal VOC annotation: ``objects`` are (name, (xmin, ymin, xmax, ymax), difficult)."""
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    objects_xml = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>1</truncated><difficult>{int(difficult)}</difficult>"
        f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, box, difficult in objects
    )
    return f"{extra}<annotation><folder>x</folder><filename>{filename}</filename><path>{path}</path>{size_xml}{objects_xml}</annotation>"


# The devkit's 1-based corners, both inclusive: (1, 1, W, H) is the whole image, so xyxy = (xmin - 1, ymin - 1, xmax, ymax).
VOC_BOXES = [((1, 1, 100, 80), [0, 0, 100, 80]), ((11, 21, 30, 40), [10, 20, 30, 40]), ((5.5, 6.5, 20.25, 30), [4.5, 5.5, 20.25, 30])]


def write_devkit(root: Path, split_file: str = "train") -> None:
    """A VOC2007-style folder with one image holding every VOC_BOXES box and a difficult one."""
    write_image(root / "JPEGImages" / "000001.jpg", 100, 80)
    objects = [("cat", box, False) for box, _ in VOC_BOXES] + [("dog", (50, 50, 60, 60), True)]
    write(root / "Annotations" / "000001.xml", voc_xml("000001.jpg", (100, 80), objects))
    write(root / "ImageSets" / "Main" / f"{split_file}.txt", "000001\n")


def test_voc_devkit_boxes_follow_the_one_based_convention(tmp_path):
    write_devkit(tmp_path)
    split, report = load_voc_split(tmp_path, SplitOptions(split="train"))
    assert_boxes(boxes(split), [("cat", want) for _, want in VOC_BOXES], 1e-6)
    assert split[0]["crowd_regions"] == [{"label": "dog", "bbox_xyxy_px": [49, 49, 60, 60]}]  # difficult: an ignore region
    assert report.counts["boxes_kept"] == 3 and report.counts["crowd_regions_kept"] == 1 and not report.examples


def test_cvat_export_with_its_default_subset_loads(tmp_path):
    write_devkit(tmp_path, split_file="default")
    write(tmp_path / "labelmap.txt", "# label:color_rgb:parts:actions\ncat:250,50,83::\ndog:51,221,255::\n")
    split, _ = load_voc_split(tmp_path, SplitOptions(split="default"))
    assert len(boxes(split)) == 3


@pytest.mark.parametrize("layout", ["roboflow", "labelimg"])
def test_voc_split_folders_find_each_image_by_its_filename(tmp_path, layout):
    # LabelImg's <path> names the machine that wrote it; Roboflow's is empty. Both keep the image beside the XML.
    path = r"C:\Users\someone\Desktop\shapes\img 1.png" if layout == "labelimg" else ""
    write_image(tmp_path / "valid" / "img 1.png", 100, 80)
    write(tmp_path / "valid" / "img 1.xml", voc_xml("img 1.png", (100, 80), [("cat", (11, 21, 30, 40), False)], path=path))
    split, report = load_voc_split(tmp_path, SplitOptions(split="validation"))
    assert_boxes(boxes(split), [("cat", [10, 20, 30, 40])], 1e-6)
    assert report.notes == ["split 'validation' read from the folder's 'valid'"]


@pytest.mark.parametrize(
    "size,counted",
    [((100, 80), 0), ((0, 0), 1), (None, 1), ((80, 100), 1), (("w", 80), 1)],
    ids=["right", "zero", "missing", "swapped", "not-a-number"],
)
def test_the_images_own_size_wins_over_the_xml(tmp_path, size, counted):
    write_image(tmp_path / "train" / "a.png", 100, 80)
    write(tmp_path / "train" / "a.xml", voc_xml("a.png", size, [("cat", (11, 21, 30, 40), False)]))
    split, report = load_voc_split(tmp_path, SplitOptions(split="train"))
    assert (split[0]["width"], split[0]["height"]) == (100, 80) and len(boxes(split)) == 1
    assert report.counts["xml_size_ignored"] == counted


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + "]>"
)
XML_ATTACKS = {
    "billion laughs": (BILLION_LAUGHS, "<name>&lol9;</name>"),
    "external entity": ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "<name>&x;</name>"),
    "external DTD": ('<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "http://example.invalid/voc.dtd">', "<name>cat</name>"),
}


@pytest.mark.parametrize("attack", list(XML_ATTACKS))
def test_an_xml_attack_is_refused_fast_and_the_rest_loads(tmp_path, attack):
    header, name = XML_ATTACKS[attack]
    for stem in ("good", "bad"):
        write_image(tmp_path / "train" / f"{stem}.png", 100, 80)
    write(tmp_path / "train" / "good.xml", voc_xml("good.png", (100, 80), [("cat", (11, 21, 30, 40), False)]))
    write(tmp_path / "train" / "bad.xml", header + voc_xml("bad.png", (100, 80), [("cat", (1, 1, 5, 5), False)]).replace("<name>cat</name>", name))
    start = time.perf_counter()
    split, report = load_voc_split(tmp_path, SplitOptions(split="train"))
    assert time.perf_counter() - start < 5
    assert len(split) == 1 and report.counts["unsafe_xml"] == 1 and "bad.xml" in report.examples[0]
    with pytest.raises(DataError, match="bad.xml"):
        load_voc_split(tmp_path, SplitOptions(split="train", strict=True))


@pytest.mark.parametrize(
    "xml,kind",
    [
        ("<annotation><filename>a.png</filename>", "malformed_xml"),  # cut off
        ("<notvoc/>", "malformed_xml"),
        (voc_xml("a.png", (100, 80), [("cat", ("x", 1, 5, 5), False)]), "malformed_box"),
        (voc_xml("a.png", (100, 80), [("cat", (30, 1, 5, 5), False)]), "inverted_box"),
        (voc_xml("../../etc/a.png", (100, 80), [("cat", (1, 1, 5, 5), False)]), "path_outside_dataset"),
        (voc_xml("missing.png", (100, 80), [("cat", (1, 1, 5, 5), False)]), "missing_image"),
        (voc_xml("a.png", (100, 80), [("&lt;|im_end|&gt;", (1, 1, 5, 5), False)]), "label_with_markup"),
    ],
    ids=["cut-off", "not-voc", "not-a-number", "inverted", "escaping-path", "missing-image", "markup-label"],
)
def test_a_bad_voc_annotation_is_counted_and_named(tmp_path, xml, kind):
    write_image(tmp_path / "train" / "a.png", 100, 80)
    write(tmp_path / "train" / "a.xml", xml)
    write_image(tmp_path / "train" / "b.png", 100, 80)
    write(tmp_path / "train" / "b.xml", voc_xml("b.png", (100, 80), [("cat", (1, 1, 5, 5), False)]))
    split, report = load_voc_split(tmp_path, SplitOptions(split="train"))
    assert report.counts[kind] == 1 and "a.xml" in report.examples[0]
    assert len(split) >= 1  # b.xml loads whatever a.xml holds


def test_a_devkit_listing_an_absent_annotation_counts_it(tmp_path):
    write_devkit(tmp_path)
    write(tmp_path / "ImageSets" / "Main" / "train.txt", "000001\n000002\n")
    split, report = load_voc_split(tmp_path, SplitOptions(split="train"))
    assert len(split) == 1 and report.counts["missing_annotation"] == 1


# ---------------------------------------------------------------- layout detection


def test_each_layout_is_recognised_and_loads_through_dataset_source(tmp_path):
    write_devkit(tmp_path / "voc")
    write_image(tmp_path / "yolo" / "images" / "train" / "a.png", 100, 80)
    write(tmp_path / "yolo" / "labels" / "train" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "yolo" / "data.yaml", "names: [cat]\n")
    for kind in ("voc", "yolo"):
        assert detect_source_kind(str(tmp_path / kind)) == kind
        splits, reports = load_detection_splits(str(tmp_path / kind), {"train": "train"}, {"train": 0}, LoadOptions())
        assert len(splits["train"]) == 1 and reports["train"].counts["boxes_kept"] >= 1


def test_two_layouts_in_one_folder_is_an_error_naming_both(tmp_path):
    write(tmp_path / "data.yaml", "names: [cat]\n")
    write(tmp_path / "train" / "annotations.json", "{}")
    with pytest.raises(DataError, match="holds coco and yolo layouts at once"):
        detect_source_kind(str(tmp_path))


def test_an_unknown_folder_lists_every_layout_with_its_tree(tmp_path):
    write(tmp_path / "notes.txt", "hello")
    with pytest.raises(DataError) as raised:
        detect_source_kind(str(tmp_path))
    for expected in ("dataset_dict.json", "<split>.jsonl", "_annotations.coco.json", "images/<split>/*.jpg",
                     "<split>/images/*.jpg", "ImageSets/Main/<split>.txt", "<split>/*.xml"):
        assert expected in str(raised.value)


def test_seeded_fuzz_of_label_files_and_xml_raises_nothing_but_counted_problems(tmp_path):
    import random

    rng = random.Random(7)
    pieces = ["0", "1", "7", "-1", "0.5", "1e9", "nan", "inf", "x", "", " ", "\t", "0.25", "1.2", "-0.3", "\x00", "é", "1,2"]
    write(tmp_path / "yolo" / "data.yaml", "names: [cat, dog]\n")
    for index in range(150):
        write_image(tmp_path / "yolo" / "images" / "train" / f"{index}.png", 20, 10)
        lines = [" ".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(0, 4))]
        write(tmp_path / "yolo" / "labels" / "train" / f"{index}.txt", "\n".join(lines))
    split, report = load_yolo_split(tmp_path / "yolo", SplitOptions(split="train"))
    assert len(split) == 150 and sum(report.counts.values()) > 0

    good = voc_xml("a.png", (20, 10), [("cat", (1, 1, 5, 5), False), ("dog", (2, 2, 9, 9), True)])
    for index in range(150):
        cut, insert = rng.randrange(len(good)), rng.choice(["<", ">", "&", "]]>", "<object>", "</bndbox>", "<!DOCTYPE a>", "", "\x00"])
        write_image(tmp_path / "voc" / "train" / f"{index}.png", 20, 10)
        write(tmp_path / "voc" / "train" / f"{index}.xml", (good[:cut] + insert + good[cut:]).replace("a.png", f"{index}.png"))
    split, report = load_voc_split(tmp_path / "voc", SplitOptions(split="train"))
    assert 0 < len(split) <= 150 and sum(report.counts.values()) > 0


@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_a_capped_split_says_how_many_of_how_many_images_it_loaded(tmp_path, layout):
    folder = tmp_path / "images" / "train" if layout == "yolo" else tmp_path / "train"
    for index in range(5):
        write_image(folder / f"{index}.png", 40, 30)
        if layout == "voc":
            write(folder / f"{index}.xml", voc_xml(f"{index}.png", (40, 30), [("cat", (1, 1, 9, 9), False)]))
    if layout == "yolo":
        write(tmp_path / "data.yaml", "names: [cat]\n")
    splits, reports = load_detection_splits(str(tmp_path), {"test": "train"}, {"test": 2}, LoadOptions())
    assert len(splits["test"]) == 2
    assert reports["test"].notes == ["2 of 5 images loaded: the split's *_size parameter caps it (0 loads all)"]
    assert "test: 2 of 5 images loaded" in format_data_report(reports)
