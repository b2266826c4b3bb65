"""Small objects in big images: the tile layout, tiled training splits, boxes mapped back from every family's tile frame, merging, per-tile loop control."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText
from supervision.detection.tools.inference_slicer import InferenceSlicer

from helpers.data.images import open_image
from helpers.data.records import records_to_dataset
from helpers.data.tiles import TILING_COUNTS, TileGrid, TileWriter, clip_to_window, negatives_to_keep, objects_in_window, tile_split
from helpers.evaluate.evaluation import detect, evaluate_model, tile_predictions
from helpers.evaluate.generation import Generation, GenerationSettings
from helpers.evaluate.metrics import MAP_SMALL, N_LOOPING_ANSWERS, N_LOOPING_TILES, N_TILES
from helpers.evaluate.slicing import Slicing, TileCrops, merge_predictions, slicing_for
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.families.processors import load_processor
from helpers.families.registry import TAGS, get_family
from tests.cases import FAMILIES


@pytest.mark.parametrize("width,height,tile,overlap,windows", [
    # smaller than a tile: the image itself, one tile
    (100, 50, 128, 32, [(0, 0, 100, 50)]),
    # exactly one tile
    (128, 128, 128, 32, [(0, 0, 128, 128)]),
    # one side longer: the last tile moved back to end at the edge (starts 0, 96, then 172 = 300 - 128)
    (300, 128, 128, 32, [(0, 0, 128, 128), (96, 0, 224, 128), (172, 0, 300, 128)]),
    # the stride lands on the edge exactly: no extra tile
    (224, 100, 128, 32, [(0, 0, 128, 100), (96, 0, 224, 100)]),
    # no overlap, two by two, the second row and column flush with the edges
    (200, 150, 100, 0, [(0, 0, 100, 100), (100, 0, 200, 100), (0, 50, 100, 150), (100, 50, 200, 150)]),
])
def test_tile_layout(width, height, tile, overlap, windows):
    assert TileGrid(tile, overlap).windows(width, height) == windows


@pytest.mark.parametrize("width,height", [(1, 1), (127, 300), (128, 129), (640, 480), (1000, 999), (4000, 3000)])
@pytest.mark.parametrize("tile,overlap", [(128, 32), (256, 1), (512, 128), (640, 100)])
def test_tile_layout_is_supervisions(width, height, tile, overlap):
    # The same windows supervision's InferenceSlicer cuts when tiles overlap: a user's own slicer meets the tiles we
    # trained on. (Without overlap supervision leaves a narrow last tile; ours is moved back whole: the table above.)
    reference = InferenceSlicer._generate_offset((width, height), (tile, tile), (overlap, overlap))
    assert TileGrid(tile, overlap).windows(width, height) == [tuple(int(v) for v in row) for row in reference]


@pytest.mark.parametrize("tile,overlap,message", [(8, 0, "tile_px"), (128, 128, "tile_overlap_px"), (128, -1, "tile_overlap_px")])
def test_a_bad_grid_names_its_parameter(tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        TileGrid(tile, overlap)


@pytest.mark.parametrize("box,window,clipped,visible", [
    ([10, 10, 20, 20], (0, 0, 100, 100), [10, 10, 20, 20], 1.0),  # inside
    ([90, 10, 110, 20], (0, 0, 100, 100), [90, 10, 100, 20], 0.5),  # half out on the right
    ([90, 10, 110, 20], (96, 0, 196, 100), [0, 10, 14, 20], 0.7),  # in the next tile, in its pixels
    ([200, 200, 210, 210], (0, 0, 100, 100), None, 0.0),  # outside
    ([95, 95, 105, 105], (0, 0, 100, 100), [95, 95, 100, 100], 0.25),  # a corner
])
def test_clip_to_window(box, window, clipped, visible):
    assert clip_to_window(box, window) == (clipped, pytest.approx(visible))


def test_objects_below_the_visibility_are_cut_and_counted():
    objects = [{"label": "a", "bbox_xyxy_px": [90, 10, 110, 20]}, {"label": "b", "bbox_xyxy_px": [95, 95, 105, 105]},
               {"label": "c", "bbox_xyxy_px": [300, 300, 310, 310]}]
    kept, cut = objects_in_window(objects, (0, 0, 100, 100), min_visibility=0.5)
    assert kept == [{"label": "a", "bbox_xyxy_px": [90, 10, 100, 20]}] and cut == 1  # "c" is not in the tile at all


@pytest.mark.parametrize("positives,negatives,ratio,kept", [(8, 10, 0.2, 2), (8, 1, 0.2, 1), (8, 10, 1.0, 10), (8, 10, 0.0, 0), (0, 5, 0.5, 0)])
def test_negatives_are_capped_at_their_share(positives, negatives, ratio, kept):
    assert negatives_to_keep(positives, negatives, ratio) == kept


def image_record(image_id: str, width: int, height: int, objects: list[dict]) -> dict:
    """A schema record with a plain grey image."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="PNG")
    return {"image_id": image_id, "image": {"bytes": buffer.getvalue(), "path": None}, "width": width, "height": height,
            "objects": objects, "crowd_regions": []}


def test_a_tiled_split_keeps_the_schema_and_counts_what_it_drops(tmp_path):
    # 300x200, tiles of 128 overlapping 32: 3 x 2 windows (x 0, 96, 172; y 0, 72)
    split = records_to_dataset([image_record("big", 300, 200, [
        {"label": "a", "bbox_xyxy_px": [10, 10, 30, 30]},  # in the tiles at x 0, y 0 only
        {"label": "b", "bbox_xyxy_px": [110, 150, 130, 170]},  # wholly in (0, 72) and (96, 72)
    ])])
    writer = TileWriter(tmp_path, lambda w, h: (w // 2, h // 2))  # the model's input: half size
    tiles, counts = tile_split(split, TileGrid(128, 32), writer, min_visibility=0.5, negative_ratio=1.0)
    assert counts.as_dict() == {"images": 1, "tiles": 6, "tiles_with_objects": 3, "negatives_kept": 3, "negatives_dropped": 0,
                                "boxes_kept": 3, "boxes_cut": 0}
    by_id = {t["image_id"]: t for t in tiles}
    assert by_id["big@0,0"]["objects"] == [{"label": "a", "bbox_xyxy_px": [10, 10, 30, 30]}]
    assert by_id["big@96,72"]["objects"] == [{"label": "b", "bbox_xyxy_px": [14, 78, 34, 98]}]  # in the tile's own pixels
    assert (by_id["big@172,72"]["width"], by_id["big@172,72"]["height"]) == (128, 128)
    assert open_image(by_id["big@172,72"]["image"]).size == (64, 64)  # stored at the model's input size, boxes in tile pixels
    capped, capped_counts = tile_split(split, TileGrid(128, 32), writer, negative_ratio=0.25, seed=1)
    assert (len(capped), capped_counts.negatives_kept, capped_counts.negatives_dropped) == (4, 1, 2)
    assert len(list(tmp_path.iterdir())) == 6  # written once, reused


FRAME_WINDOW = (200, 100, 456, 356)  # a 256 x 256 tile
EDGE_WINDOW = (400, 300, 600, 400)  # a 200 x 100 tile at the edge of a 600 x 400 image


def tile_answer(family, coords: list[int]) -> str:
    """One red circle at ``coords`` in the family's answer syntax."""
    if family.answer_syntax == TAGS:
        x1, y1, x2, y2 = coords
        return f"<|object_ref_start|>red circle<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    return '[{"bbox_2d": %s, "label": "red circle"}]' % coords


# (window, the tile's size as the model saw it, the answer in 0..1000 of the tile, in the tile's resized pixels, the box in image pixels by hand)
MAPPING_CASES = [
    # 0..1000: 250 of 256 px = 64, 500 -> 128, 750 -> 192; resized 224 px: 56 * 256/224 = 64, 112 -> 128, 168 -> 192; + origin (200, 100)
    (FRAME_WINDOW, (224, 224), [250, 500, 500, 750], [56, 112, 112, 168], [264, 228, 328, 292]),
    # 500 of 200 px = 100, of 100 px = 50; resized 224 x 112: 112 * 200/224 = 100, 56 * 100/112 = 50; + origin (400, 300)
    (EDGE_WINDOW, (224, 112), [500, 500, 1000, 1000], [112, 56, 224, 112], [500, 350, 600, 400]),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("window,model_size,norm1000,resized_px,expected", MAPPING_CASES)
def test_tile_boxes_map_back_to_image_pixels_in_every_family_frame(family, window, model_size, norm1000, resized_px, expected):
    text = tile_answer(family, norm1000 if family.relative else resized_px)
    generation = Generation(text, [0], [0.9], [len(text)], model_size)
    (box,) = tile_predictions(generation, family, window)
    assert box["label"] == "red circle" and box["score"] == pytest.approx(0.9)
    assert box["bbox_xyxy_px"] == pytest.approx(expected)


def box(label: str, xyxy: list[float], score: float) -> dict:
    return {"label": label, "bbox_xyxy_px": xyxy, "score": score}


@pytest.mark.parametrize("merge,predictions,expected", [
    # An object at x 200-300 cut by a tile ending at 256: one tile saw its left part, the next one all of it: one box.
    ("nmm", [box("a", [200, 50, 256, 90], 0.8), box("a", [200, 50, 300, 90], 0.6)], [box("a", [200, 50, 300, 90], (56 * 0.8 + 100 * 0.6) / 156)]),
    # An object at x 180-300, wider than the overlap of tiles 0-256 and 192-448: each holds a part, and the parts
    # (sharing 64 of the smaller's 76 px) are merged into their union, scored by area.
    ("nmm", [box("a", [180, 50, 256, 90], 0.8), box("a", [192, 50, 300, 90], 0.7)], [box("a", [180, 50, 300, 90], (76 * 0.8 + 108 * 0.7) / 184)]),
    # Suppression keeps the best-scored box instead.
    ("nms", [box("a", [200, 50, 256, 90], 0.8), box("a", [200, 50, 300, 90], 0.6)], [box("a", [200, 50, 256, 90], 0.8)]),
    # Another class at the same place is another object.
    ("nmm", [box("a", [200, 50, 256, 90], 0.8), box("b", [200, 50, 300, 90], 0.6)], [box("a", [200, 50, 256, 90], 0.8), box("b", [200, 50, 300, 90], 0.6)]),
    # Neighbours that do not overlap stay apart.
    ("nmm", [box("a", [0, 0, 10, 10], 0.9), box("a", [20, 0, 30, 10], 0.9)], [box("a", [0, 0, 10, 10], 0.9), box("a", [20, 0, 30, 10], 0.9)]),
])
def test_boxes_of_one_object_from_two_tiles_become_one(merge, predictions, expected):
    merged = sorted(merge_predictions(predictions, merge, 0.5), key=lambda p: (p["label"], p["bbox_xyxy_px"]))
    assert [(p["label"], p["bbox_xyxy_px"]) for p in merged] == [(p["label"], p["bbox_xyxy_px"]) for p in expected]
    assert [p["score"] for p in merged] == pytest.approx([p["score"] for p in expected])


def test_tile_crops_cut_each_window_from_a_smaller_copy_at_the_same_place():
    image = Image.fromarray(np.arange(400 * 200 * 3, dtype=np.uint32).reshape(200, 400, 3).astype(np.uint8))
    crops = TileCrops([image, image.resize((200, 100))], [(400, 200), (400, 200)], [(0, (100, 0, 300, 200)), (1, (100, 0, 300, 200))])
    assert [c.size for c in crops[0:2]] == [(200, 200), (100, 100)]


def test_no_tiles_means_no_slicing():
    assert slicing_for(0, 64) is None
    assert slicing_for(256, 64, full_image_pass=False) == Slicing(TileGrid(256, 64), full_image_pass=False)
    with pytest.raises(ValueError, match="tile_merge"):
        slicing_for(256, 64, merge="wbf")


class ScriptedRows:
    """A logits processor that makes row ``r`` of a batch write ``scripts[r]`` over and over."""

    def __init__(self, scripts: list[list[int]], prompt_length: int):
        self.scripts, self.prompt_length = scripts, prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        scores[:] = torch.finfo(scores.dtype).min
        for row, script in enumerate(self.scripts):
            scores[row, script[step % len(script)]] = 0.0
        return scores


def scripted_model(tiny_checkpoints, family, scripts: list[str]):
    """The tiny model of ``family`` made to write ``scripts[r]`` in batch row ``r``, its processor, and the settings doing it."""
    processor = load_processor(tiny_checkpoints[family], 12544, 12544)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    ids = [processor.tokenizer.encode(text, add_special_tokens=False) for text in scripts]
    return model, processor, lambda prompt_length: [ScriptedRows(ids, prompt_length)]


def test_loop_control_acts_per_tile(tiny_checkpoints):
    # One 256 x 256 image in four 128-px tiles, answered in one batch: the first tile loops on one object,
    # the other three answer nothing. Only the first tile is stopped, and its object kept once, where it is.
    family = get_family("qwen2_5_vl")
    one = '{"bbox_2d": [28, 28, 56, 56], "label": "red circle"}, '
    model, processor, scripts = scripted_model(tiny_checkpoints, family, [one, "[]<|im_end|>", "[]<|im_end|>", "[]<|im_end|>"])
    dataset = add_chat_columns(records_to_dataset([image_record("big", 256, 256, [])]), family, detection_prompt(family, ["red circle"]),
                               12544, 12544)
    settings = GenerationSettings(max_new_tokens=120, batch_size=4, batch_logits_processors=scripts)
    records, metrics = evaluate_model(model, processor, dataset, family=family, settings=settings,
                                      slicing=Slicing(TileGrid(128, 0), full_image_pass=False))
    (record,) = records
    assert (record["tiles"], record["tiles_loop_stopped"], record["loop_stopped"]) == (4, 1, True)
    assert (metrics[N_TILES], metrics[N_LOOPING_TILES], metrics[N_LOOPING_ANSWERS]) == (4, 1, 1)
    assert [t.count("red circle") for t in record["tile_answers"]] == [3, 0, 0, 0]  # stopped at the third copy
    assert record["tile_answers"][1:] == ["[]"] * 3
    # 128-px tiles resized to 112: 28 -> 32 px; the first tile's origin is the image's
    assert [p["bbox_xyxy_px"] for p in record["predictions"]] == [pytest.approx([32, 32, 64, 64])]


def test_detect_on_a_large_image_returns_boxes_in_its_pixels(tiny_checkpoints):
    # A 600 x 400 image in 256-px tiles without overlap: 3 x 2 tiles (x 0, 256, 344; y 0, 144), each answering one
    # box at the middle of its tile (resized to 112: 28..84 is 64..192 px of the tile); the whole-image pass too.
    family = get_family("qwen2_5_vl")
    answer = '[{"bbox_2d": [28, 28, 84, 84], "label": "red circle"}]<|im_end|>'
    model, processor, scripts = scripted_model(tiny_checkpoints, family, [answer] * 6)
    image = Image.new("RGB", (600, 400), (200, 200, 200))
    slicing = Slicing(TileGrid(256, 0), full_image_pass=False, merge="nmm")
    boxes = detect(model, processor, image, family=family, prompt=detection_prompt(family, ["red circle"]), max_new_tokens=40,
                   slicing=slicing, batch_size=6, batch_logits_processors=scripts)
    tiles_of = [(0, 0), (256, 0), (344, 0), (0, 144), (256, 144), (344, 144)]
    expected = [[x + 64, y + 64, x + 192, y + 192] for x, y in tiles_of]
    # Tiles 256 and 344 overlap: their boxes (320-448 and 408-536) overlap by 40/128 of each, under the 0.5 merge threshold.
    found = sorted(b["bbox_xyxy_px"] for b in boxes)
    assert found == [pytest.approx(e) for e in sorted(expected)]
    assert all(0 <= b["bbox_xyxy_px"][0] < b["bbox_xyxy_px"][2] <= 600 and 0 <= b["bbox_xyxy_px"][1] < b["bbox_xyxy_px"][3] <= 400 for b in boxes)


@pytest.mark.slow
def test_a_tiled_run_trains_on_tiles_and_detects_tile_by_tile(tmp_path, run_notebook, load_benchmark):
    # Images of 256-320 px with 16-40 px shapes, in 128-px tiles: training and eval splits become tiles, the test
    # images stay whole and are answered tile by tile (and whole, for the comparison); model/ detects by tiles.
    result = run_notebook(
        tmp_path, "model_id=offline:qwen2_5_vl", "synthetic_min_side_px=256", "synthetic_max_side_px=320", "synthetic_object_px=[16, 40]",
        "synthetic_max_objects=8", "tile_px=128", "tile_overlap_px=32", "tile_full_image_pass=false", "min_pixels=12544",
        "max_pixels=12544", "test_size=2", "run_name=tiled",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "tiled"
    report = json.loads((run_dir / "data_report.json").read_text())
    tiling = report[TILING_COUNTS]
    assert (tiling["tile_px"], tiling["overlap_px"], tiling["train"]["images"], tiling["eval"]["images"]) == (128, 32, 32, 8)
    assert tiling["train"]["tiles"] == tiling["train"]["tiles_with_objects"] + tiling["train"]["negatives_kept"] + tiling["train"]["negatives_dropped"]
    assert tiling["train"]["negatives_kept"] <= 0.2 / 0.8 * tiling["train"]["tiles_with_objects"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["tiles"] >= 9 and len(row["tile_answers"]) == row["tiles"] for row in rows)  # 256 px: 3 x 3 tiles
    assert metrics["finetuned"][N_TILES] == metrics["baseline"][N_TILES] == sum(row["tiles"] for row in rows)
    assert metrics["finetuned_whole_image"][N_TILES] == 0 and MAP_SMALL in metrics["finetuned"]
    assert (run_dir / "plots" / "sliced.png").is_file()
    inference = json.loads((run_dir / "model" / "inference.json").read_text())
    assert (inference["tile_px"], inference["tile_overlap_px"], inference["tile_full_image_pass"]) == (128, 32, False)
    # The slicing benchmark's second look at a run: the held-out images generated again, answered whole, and the
    # sliced evaluation timed with tiles batched and one at a time, which give the same answers.
    figures = load_benchmark("slicing").evaluate_run(run_dir, whole_tokens=32, timing_images=1, batch_size=4)
    assert figures["same_answers"] and figures["timing_tiles"] == rows[0]["tiles"] and figures["batched_s"] > 0
    assert set(figures) >= {f"whole image_{key}" for key in load_benchmark("slicing").KEYS}


@pytest.mark.parametrize("object_px", [(16, 40), (12, 12), (30, 64)])
def test_synthetic_shapes_can_be_given_in_pixels(object_px):
    from helpers.data.synthetic import make_synthetic_dataset

    split = make_synthetic_dataset(6, seed=2, min_side_px=256, max_side_px=320, max_objects=20, object_px=object_px)
    sides = [o["bbox_xyxy_px"][2] - o["bbox_xyxy_px"][0] for objects in split["objects"] for o in objects]
    assert sides and all(object_px[0] <= side <= object_px[1] for side in sides)


@pytest.mark.parametrize("object_px", [(40, 16), (2, 10), (16, 400), (16,)])
def test_bad_synthetic_object_sizes_are_named(object_px):
    from helpers.data.synthetic import make_synthetic_dataset

    with pytest.raises(ValueError, match="synthetic_object_px"):
        make_synthetic_dataset(1, seed=0, min_side_px=256, max_side_px=320, object_px=object_px)
