"""The synthetic detection dataset: deterministic, valid boxes, varied sizes."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.families.boxes import box_iou
from helpers.data.schema import DETECTION_FEATURES
from helpers.data.synthetic import CLASS_STYLES, TINT_LEVELS, TINT_NOISE_LEVELS, make_synthetic_dataset
from helpers.data.images import open_image, open_images


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (make_synthetic_dataset(6, seed=s) for s in (1, 1, 2))
    assert a["objects"] == b["objects"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(open_images(a["image"]), open_images(b["image"])))
    assert a["objects"] != c["objects"]


def test_schema_and_box_validity():
    ds = make_synthetic_dataset(40, seed=0, min_side_px=64, max_side_px=200, max_objects=4)
    assert ds.features == DETECTION_FEATURES
    counts = [len(objects) for objects in ds["objects"]]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    for example in ds:
        image = open_image(example["image"])
        assert image.size == (example["width"], example["height"]) and image.mode == "RGB"
        for obj in example["objects"]:
            x1, y1, x2, y2 = obj["bbox_xyxy_px"]
            assert 0 <= x1 < x2 <= example["width"] and 0 <= y1 < y2 <= example["height"]
            assert obj["label"] in CLASS_STYLES
        boxes = [o["bbox_xyxy_px"] for o in example["objects"]]
        assert all(box_iou(p, q) == 0 for i, p in enumerate(boxes) for q in boxes[i + 1 :])  # no overlaps


def test_image_sizes_and_aspect_ratios_vary():
    ds = make_synthetic_dataset(30, seed=0, min_side_px=96, max_side_px=224)
    ratios = [w / h for w, h in zip(ds["width"], ds["height"])]
    assert len(set(zip(ds["width"], ds["height"]))) > 20
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_shape_pixels_fill_their_box():
    ds = make_synthetic_dataset(5, seed=4, class_names=["green square"], max_objects=1)
    for example in ds:
        x1, y1, x2, y2 = (int(v) for v in example["objects"][0]["bbox_xyxy_px"])
        pixels = np.asarray(open_image(example["image"]))
        green = (pixels == CLASS_STYLES["green square"][1]).all(axis=-1)
        ys, xs = np.nonzero(green)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)


def test_position_tint_grows_left_to_right_in_red_and_top_to_bottom_in_green():
    plain, tinted = (make_synthetic_dataset(20, seed=3, min_side_px=128, max_side_px=200, position_tint=t) for t in (False, True))
    assert plain["objects"] == tinted["objects"]  # the tint changes the background only
    for example in tinted:
        pixels = np.asarray(open_image(example["image"])).astype(float)
        box_free = np.ones(pixels.shape[:2], bool)
        for obj in example["objects"]:
            x1, y1, x2, y2 = (int(v) for v in obj["bbox_xyxy_px"])
            box_free[y1:y2, x1:x2] = False
        columns = np.array([pixels[:, x, 0][box_free[:, x]].mean() for x in (0, pixels.shape[1] - 1)])
        rows = np.array([pixels[y, :, 1][box_free[y, :]].mean() for y in (0, pixels.shape[0] - 1)])
        blue = np.array([pixels[:, x, 2][box_free[:, x]].mean() for x in (0, pixels.shape[1] - 1)])
        # TINT_LEVELS from edge to edge, less the noise of the means; blue carries no position
        assert abs(columns[1] - columns[0] - TINT_LEVELS) < 4 and abs(rows[1] - rows[0] - TINT_LEVELS) < 4
        assert abs(blue[1] - blue[0]) < 4
        background = pixels[box_free]
        assert background.min() >= 255 - TINT_LEVELS - TINT_NOISE_LEVELS and background.max() <= 255  # no clipping
    for example in plain:
        pixels = np.asarray(open_image(example["image"])).astype(float)
        assert abs(pixels[:, -1, 0].mean() - pixels[:, 0, 0].mean()) < 10


def test_square_images_are_square_deterministic_and_vary_in_size():
    squares = make_synthetic_dataset(30, seed=5, min_side_px=64, max_side_px=160, square=True)
    assert all(w == h for w, h in zip(squares["width"], squares["height"]))
    assert len(set(squares["width"])) > 15 and min(squares["width"]) < 90 and max(squares["width"]) > 130
    again = make_synthetic_dataset(30, seed=5, min_side_px=64, max_side_px=160, square=True)
    assert squares["objects"] == again["objects"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"class_names": ["pink star"]}, "unknown synthetic classes"),
        ({"min_side_px": 300, "max_side_px": 200}, "min_side_px <= max_side_px"),
        ({"max_objects": 0}, "max_objects must be >= 1"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_dataset(2, seed=0, **kwargs)
