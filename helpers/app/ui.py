"""The app's two tabs: browse a run's test images by class and error kind, and try its model on an image."""

from __future__ import annotations

import os
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from helpers.app.run_view import ALL_CLASSES, ALL_IMAGES, ANY_ERROR, MAX_UPLOAD_BYTES, UPLOAD_FORMATS, RunView, read_upload  # noqa: E402
from helpers.evaluate.errors import ERROR_KINDS  # noqa: E402
from helpers.evaluate.plotting import PREDICTION_COLOR  # noqa: E402

PER_CLASS_HEADERS = ["class", "objects", "AP@.5", "precision", "recall"]
MAX_GALLERY_IMAGES = 60  # drawn per filter change; narrow the filters to see the others
NO_MODEL = "This run has no `model/` folder (still training, or stopped before saving): the Try tab needs one."


def browse_summary(view: RunView, matching: int, threshold: float) -> str:
    """The line above the gallery: images shown, and precision and recall at the threshold."""
    precision, recall, n_boxes = view.precision_recall(threshold)
    figure = lambda v: "n/a" if v != v else f"{v:.2f}"  # noqa: E731
    shown = (f"**{matching} images** shown of {len(view.previews)}" if matching <= MAX_GALLERY_IMAGES
             else f"**{matching} images** match of {len(view.previews)}, the first {MAX_GALLERY_IMAGES} shown")
    return (f"{shown} · at score ≥ {threshold:.2f}: "
            f"precision **{figure(precision)}**, recall **{figure(recall)}** ({n_boxes} boxes, IoU 0.5)")


def browse(view: RunView, class_name: str, kind: str, threshold: float) -> tuple[str, list, list]:
    """Summary, gallery and per-class rows for the filters."""
    indices = view.selected(class_name, kind, threshold)
    gallery = [(view.drawing(i, threshold), view.caption(i, threshold)) for i in indices[:MAX_GALLERY_IMAGES]]
    return browse_summary(view, len(indices), threshold), gallery, view.per_class_rows(threshold)


def draw_result(image: Image.Image, boxes: list[dict]) -> Image.Image:
    """The boxes drawn on the image with label and score."""
    from PIL import ImageDraw, ImageFont

    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    font = ImageFont.load_default(size=max(10, image.height // 30))
    for box in boxes:
        x1, y1, x2, y2 = box["bbox_xyxy_px"]
        draw.rectangle([x1, y1, x2, y2], outline=PREDICTION_COLOR, width=2)
        draw.text((x1 + 2, y1 + 1), f"{box['label']} {box['score']:.2f}", fill=PREDICTION_COLOR, font=font)
    return drawn


def build_app(view: RunView, load_detector: Callable) -> gr.Blocks:
    """The Gradio app for a run; ``load_detector()`` gives the run's ``Detector`` (called once, on the first detection)."""
    detectors: list = []
    settings = view.settings or {}
    image_ids = view.image_ids()

    def detect(upload: str | None, picked: str | None, tiles: bool, tile_px: float):
        if not view.has_model:
            return None, NO_MODEL, None
        try:
            if upload:  # Gradio's own copy of the uploaded file, on this machine
                image = read_upload(upload)
            elif picked in image_ids:
                image = view.preview(image_ids.index(picked))
            else:
                return None, "Upload an image or pick a test image.", None
            if not detectors:
                detectors.append(load_detector())
            result = detectors[0](image, tile_px=int(tile_px) if tiles else 0)
        except ValueError as error:
            return None, str(error), None
        labels = ", ".join(sorted({b["label"] for b in result.boxes})) or "none"
        count = f"{len(result.boxes)} box" + ("" if len(result.boxes) == 1 else "es")
        return draw_result(image, result.boxes), f"**{count}** ({labels})", result.as_dict()

    with gr.Blocks(title=f"{view.root.name}: what the model finds") as app:
        gr.Markdown(f"## {view.root.name}\n{len(view.previews)} test images · classes: {', '.join(view.class_names)}. "
                    "Ground truth green (red when missed), boxes coloured by kind: true positive magenta, localisation orange, "
                    f"confusion red, duplicate cyan, background magenta; {' left, '.join(stage.name for stage in view.stages)} right.")
        with gr.Tab("Browse", elem_id="browse-tab"):
            with gr.Row():
                class_name = gr.Dropdown([ALL_CLASSES, *view.class_names], value=ALL_CLASSES, label="class", elem_id="class-filter")
                kind = gr.Dropdown([ALL_IMAGES, ANY_ERROR, *ERROR_KINDS], value=ALL_IMAGES, label="error kind", elem_id="kind-filter")
                threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="score threshold", elem_id="threshold")
            summary = gr.Markdown(elem_id="browse-summary")
            gallery = gr.Gallery(columns=3, height="auto", label="test images", elem_id="gallery", object_fit="contain")
            table = gr.Dataframe(headers=PER_CLASS_HEADERS, label="per class (AP@.5 over all boxes; precision, recall at the threshold)",
                                 elem_id="per-class", interactive=False)
            filters = [class_name, kind, threshold]
            for control in filters:
                control.change(lambda c, k, t: browse(view, c, k, t), filters, [summary, gallery, table])
            app.load(lambda c, k, t: browse(view, c, k, t), filters, [summary, gallery, table])
        with gr.Tab("Try", elem_id="try-tab"):
            if not view.has_model:
                gr.Markdown(NO_MODEL)
            with gr.Row():
                upload = gr.File(label=f"an image ({', '.join(UPLOAD_FORMATS)}, at most {MAX_UPLOAD_BYTES // 2**20} MB)",
                                 file_types=[".jpg", ".jpeg", ".png", ".webp", ".bmp"], type="filepath", elem_id="upload")
                picked = gr.Dropdown(image_ids, value=None, label="or a test image", elem_id="pick")
            with gr.Row():
                tiles = gr.Checkbox(value=bool(settings.get("tile_px")), label="tile the image (small objects in big photos)", elem_id="tiles")
                tile_px = gr.Slider(64, 2048, value=settings.get("tile_px") or 640, step=32, label="tile side, px", elem_id="tile-px")
            run = gr.Button("Detect", variant="primary", elem_id="detect", interactive=view.has_model)
            message = gr.Markdown(elem_id="result-summary")
            result_image = gr.Image(type="pil", label="boxes", elem_id="result-image")
            result_json = gr.JSON(label="boxes in the image's pixels, and the raw answer", elem_id="result-json")
            run.click(detect, [upload, picked, tiles, tile_px], [result_image, message, result_json])
    return app
