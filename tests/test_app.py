"""The run browser (``python -m helpers.app``): a small run folder made here, filtered, refused when it must be, and in a real browser.

The run folder's predictions are written by hand over the test images, so what each filter shows is known
by construction: for images 0-7, image i gets a box on each object (score 0.9), and then
- i % 4 == 1: its first object's box moved sideways by half its width (IoU 1/3, score 0.4): localisation, and that object missed;
- i % 4 == 2: one more box, 2x2 px in a corner (score 0.3): background;
- i % 4 == 3: no box at all: every object missed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from helpers.app.__main__ import LOCALHOST, main, parse_args
from helpers.app.run_view import ALL_CLASSES, ANY_ERROR, MAX_UPLOAD_BYTES, RunFolderError, RunView, read_upload
from helpers.data.images import PREVIEW_FOLDER, write_previews
from helpers.data.synthetic import make_synthetic_dataset
from helpers.evaluate.errors import BACKGROUND, LOCALISATION, MISSED

N_IMAGES = 8
EXPECTED = {LOCALISATION: [1, 5], BACKGROUND: [2, 6], MISSED: [1, 3, 5, 7], ANY_ERROR: [1, 2, 3, 5, 6, 7]}
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def fabricated_predictions(objects: list[dict], i: int) -> list[dict]:
    """The module docstring's predictions for image ``i``."""
    predictions = [{"label": o["label"], "bbox_xyxy_px": list(o["bbox_xyxy_px"]), "score": 0.9} for o in objects]
    if i % 4 == 1:
        x1, y1, x2, y2 = objects[0]["bbox_xyxy_px"]
        shift = (x2 - x1) / 2
        predictions[0] = {"label": objects[0]["label"], "bbox_xyxy_px": [x1 + shift, y1, x2 + shift, y2], "score": 0.4}
    if i % 4 == 2:
        predictions.append({"label": objects[0]["label"], "bbox_xyxy_px": [0, 0, 2, 2], "score": 0.3})
    return [] if i % 4 == 3 else predictions


def make_run_folder(root: Path, model_from: Path | None = None) -> Path:
    """A finished run's folder: test image previews, both stages' predictions, metrics, and ``model/`` when given one."""
    dataset = make_synthetic_dataset(N_IMAGES, seed=3, max_objects=3, min_side_px=128, max_side_px=192)
    write_previews(dataset, root / PREVIEW_FOLDER)
    lines, baseline = [], []
    for i, example in enumerate(dataset):
        record = {"image_id": str(example["image_id"]), "file_name": None, "ground_truth": example["objects"], "crowd_regions": [],
                  "raw_text": "x", "loop_stopped": False, "duplicates_dropped": 0}
        lines.append(json.dumps(record | {"predictions": fabricated_predictions(example["objects"], i)}))
        baseline.append(json.dumps(record | {"predictions": []}))
    (root / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "predictions_baseline.jsonl").write_text("\n".join(baseline) + "\n")
    (root / "metrics.json").write_text("{}")
    if model_from is not None:
        shutil.copytree(model_from, root / "model")
    return root


@pytest.fixture
def run_folder(tmp_path) -> Path:
    return make_run_folder(tmp_path / "run")


@pytest.mark.parametrize("kind", EXPECTED)
def test_each_error_kind_shows_the_images_made_with_it(run_folder, kind):
    assert RunView(run_folder).selected(ALL_CLASSES, kind) == EXPECTED[kind]


def test_the_threshold_moves_precision_and_recall(run_folder):
    view = RunView(run_folder)
    n_objects = sum(len(r["ground_truth"]) for r in view.final.records)
    n_found = n_objects - sum(len(view.final.records[i]["ground_truth"]) for i in (3, 7)) - 2  # two moved boxes miss their objects
    precision, recall, n_boxes = view.precision_recall(0.0)
    assert (precision, recall) == (pytest.approx(n_found / n_boxes), pytest.approx(n_found / n_objects)) and precision < 1
    assert view.precision_recall(0.5) == (pytest.approx(1.0), pytest.approx(n_found / n_objects), n_found)
    # Above 0.4 the moved boxes are gone: no localisation error is left, their objects stay missed.
    assert view.selected(ALL_CLASSES, LOCALISATION, 0.5) == [] and view.selected(ALL_CLASSES, MISSED, 0.5) == EXPECTED[MISSED]


def test_a_class_filter_keeps_images_holding_that_class(run_folder):
    view = RunView(run_folder)
    for name in view.class_names:
        expected = [i for i, r in enumerate(view.final.records) if any(o["label"] == name for o in r["ground_truth"])]
        assert view.selected(name) == expected
    rows = {row[0]: row for row in view.per_class_rows(0.0)}
    assert sum(row[1] for row in rows.values()) == sum(len(r["ground_truth"]) for r in view.final.records)


def test_each_image_is_drawn_once_per_stage(run_folder):
    view = RunView(run_folder)
    drawing = view.drawing(1, 0.0)
    assert drawing.width > 2 * view.preview(1).width and view.caption(1, 0.0).endswith(f"{LOCALISATION}, {MISSED}")


def test_after_grpo_the_saved_stage_is_named_so(run_folder):
    assert [stage.name for stage in RunView(run_folder).stages] == ["baseline", "fine-tuned"]
    shutil.copy(run_folder / "predictions.jsonl", run_folder / "predictions_sft.jsonl")  # what a run with grpo_steps > 0 writes
    assert [stage.name for stage in RunView(run_folder).stages] == ["baseline", "GRPO"]


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda root: shutil.rmtree(root), "no such folder"),
        (lambda root: ((root / "metrics.json").unlink(), (root / "checkpoints").mkdir()), "still training"),
        (lambda root: (root / "predictions.jsonl").unlink(), "not a run folder"),
        (lambda root: shutil.rmtree(root / PREVIEW_FOLDER), "no test_images/index.json"),
        (lambda root: (root / "predictions.jsonl").write_text((root / "predictions.jsonl").read_text().split("\n", 1)[1]),
         "7 predictions for 8 test images"),
    ],
    ids=["missing", "still-training", "no-predictions", "no-previews", "mismatched"],
)
def test_an_incomplete_run_folder_is_refused_with_what_is_missing(run_folder, damage, message):
    damage(run_folder)
    with pytest.raises(RunFolderError, match=message):
        RunView(run_folder)
    with pytest.raises(SystemExit, match=message):
        main([str(run_folder)])


def test_nothing_outside_the_run_folder_is_read(run_folder, tmp_path):
    outside = tmp_path / "secret.jsonl"
    shutil.copy(run_folder / "predictions.jsonl", outside)
    (run_folder / "predictions.jsonl").unlink()
    (run_folder / "predictions.jsonl").symlink_to(outside)  # a link out of the folder
    with pytest.raises(RunFolderError, match="leads outside the run folder"):
        RunView(run_folder)
    (run_folder / "predictions.jsonl").unlink()
    shutil.copy(outside, run_folder / "predictions.jsonl")
    index = run_folder / PREVIEW_FOLDER / "index.json"
    entries = json.loads(index.read_text())
    entries[0]["file"] = "../../secret.jsonl"  # a path in the index climbing out
    index.write_text(json.dumps(entries))
    with pytest.raises(RunFolderError, match="leads outside the run folder"):
        RunView(run_folder).preview(0)


def test_uploads_are_checked_for_size_and_type(tmp_path):
    from PIL import Image

    good = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "red").save(good)
    assert read_upload(good).size == (40, 30)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ValueError, match="upload refused: not an image Pillow can read"):
        read_upload(text)
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (4, 4)).save(gif)
    with pytest.raises(ValueError, match="upload refused: a GIF image"):
        read_upload(gif)
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(ValueError, match="upload refused: the file is over 20 MB"):
        read_upload(big)


def test_the_app_listens_on_this_machine_only_by_default():
    assert parse_args(["outputs/run"]).host == LOCALHOST == "127.0.0.1"


def test_the_gallery_draws_at_most_its_cap_and_says_so(run_folder, monkeypatch):
    from helpers.app import ui

    monkeypatch.setattr(ui, "MAX_GALLERY_IMAGES", 3)
    summary, gallery, rows = ui.browse(RunView(run_folder), ALL_CLASSES, ANY_ERROR, 0.0)
    assert len(gallery) == 3 and summary.startswith(f"**{len(EXPECTED[ANY_ERROR])} images** match of {N_IMAGES}, the first 3 shown")
    assert [caption for _, caption in gallery][0].startswith("#")


def test_without_a_model_the_try_tab_says_so(run_folder):
    from helpers.app.ui import NO_MODEL, build_app

    view = RunView(run_folder)
    assert not view.has_model
    app = build_app(view, load_detector=lambda: pytest.fail("no model to load"))
    assert NO_MODEL in json.dumps(app.config)


# ---------------------------------------------------------------- in a real browser


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def chromium_path() -> str:
    """Debian's chromium, which make test installs; outside CI a machine without it skips the browser test."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: make test installs it with apt-get (Makefile, 'browser')")
        pytest.skip("chromium is not installed (apt-get install chromium, or make test)")
    return path


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option of a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


@pytest.mark.slow
def test_browse_and_try_in_a_real_browser(tmp_path, sft_grpo_run):
    from playwright.sync_api import expect, sync_playwright

    from helpers.app.ui import build_app
    from helpers.detect import Detector

    result, trained = sft_grpo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    view = RunView(make_run_folder(tmp_path / "run", model_from=trained / "model"))
    app = build_app(view, lambda: Detector.from_folder(view.root))
    port = free_port()
    app.launch(server_name=LOCALHOST, server_port=port, prevent_thread_lock=True, max_file_size=MAX_UPLOAD_BYTES, quiet=True)
    shots = Path(os.environ.get("APP_SCREENSHOTS", tmp_path))  # APP_SCREENSHOTS=docs/images refreshes the docs' pictures
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://{LOCALHOST}:{port}/")
            summary = page.locator("#browse-summary")
            expect(summary).to_contain_text(f"{N_IMAGES} images shown", timeout=60_000)
            choose(page, "kind-filter", LOCALISATION)
            expect(summary).to_contain_text(f"{len(EXPECTED[LOCALISATION])} images shown", timeout=30_000)
            expect(page.locator("#gallery img")).to_have_count(len(EXPECTED[LOCALISATION]), timeout=30_000)
            choose(page, "kind-filter", MISSED)
            expect(summary).to_contain_text(f"{len(EXPECTED[MISSED])} images shown", timeout=30_000)
            precision_at_0 = f"precision **{view.precision_recall(0.0)[0]:.2f}**".replace("**", "")
            expect(summary).to_contain_text(precision_at_0)
            threshold = page.locator("#threshold input[type=number]")
            threshold.fill("0.5")
            threshold.press("Enter")
            expect(summary).to_contain_text("precision 1.00", timeout=30_000)
            threshold.fill("0")
            threshold.press("Enter")
            choose(page, "kind-filter", ANY_ERROR)
            expect(summary).to_contain_text(f"{len(EXPECTED[ANY_ERROR])} images shown", timeout=30_000)
            page.wait_for_timeout(2000)  # the gallery's fade-in, for the picture
            page.screenshot(path=str(shots / "app_browse.png"), full_page=True)

            page.get_by_role("tab", name="Try").click()
            upload, message = page.locator("#upload"), page.locator("#result-summary")
            not_an_image = tmp_path / "notes.png"  # the browser lets a .png through; the app reads what it holds
            not_an_image.write_text("not an image")
            upload.locator("input[type=file]").set_input_files(str(not_an_image))
            page.locator("#detect").click()
            expect(message).to_contain_text("upload refused: not an image", timeout=30_000)
            upload.get_by_role("button", name="Clear").click()
            # One of the trained run's own test images, the one its model found most boxes on.
            answered = [json.loads(line) for line in (trained / "predictions.jsonl").read_text().splitlines()]
            picture = max(range(len(answered)), key=lambda i: len(answered[i]["predictions"]))
            upload.locator("input[type=file]").set_input_files(str(trained / PREVIEW_FOLDER / f"{picture:05d}.jpg"))
            page.locator("#detect").click()
            expect(message).to_contain_text(re.compile(r"\d+ box(es)? \("), timeout=120_000)
            n_boxes = int(message.inner_text().split()[0])
            assert n_boxes >= 1, message.inner_text()
            expect(page.locator("#result-image img")).to_be_visible()
            page.wait_for_timeout(2000)
            page.screenshot(path=str(shots / "app_try.png"), full_page=True)
            browser.close()
    finally:
        app.close()
