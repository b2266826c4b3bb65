"""A finished run folder, read safely for the app: its predictions judged, filtered and drawn.

Everything is read from inside the run folder given on the command line: every path is resolved
and refused when it leads outside (a symbolic link, ``..`` in ``test_images/index.json``), and every
image is read with the project's reader (a regular file of bounded size, fully decoded, upright 8-bit
RGB). Nothing the browser sends is a path: images are picked by their place in the list, uploads
arrive as bytes Gradio stored, checked for size and format before they are decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from helpers.data.images import PREVIEW_FOLDER, PREVIEW_INDEX, ImageTooLarge, decode_image, open_header, read_regular_file
from helpers.detect import INFERENCE_FILE
from helpers.evaluate.coco import run_coco
from helpers.evaluate.errors import AP_50, ERROR_KINDS, MISSED, ImageErrors, error_analysis, judge_images, precision_recall_at
from helpers.evaluate.plotting import ERROR_COLORS, GROUND_TRUTH_COLOR

MAX_UPLOAD_BYTES = 20 * 2**20  # an upload above this is refused before it is read
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")  # what Pillow must recognise an upload as
MAX_RECORD_BYTES = 256 * 2**20  # predictions and metrics files larger than this are not a run of ours
ALL_CLASSES, ALL_IMAGES, ANY_ERROR = "all classes", "all images", "any error"
PANEL_LABEL_PX = 18  # height of the stage label above each panel


class RunFolderError(ValueError):
    """A run folder the app cannot show, with what is missing and what to do."""


def inside(root: Path, relative: str | Path) -> Path:
    """``root / relative`` resolved, refused when it leads outside ``root`` (``..``, an absolute path, a link)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise RunFolderError(f"{relative}: leads outside the run folder {root}; the app reads nothing there")
    return path


def read_json_inside(root: Path, relative: str) -> object:
    """A JSON file of the run folder."""
    return json.loads(read_regular_file(inside(root, relative), max_bytes=MAX_RECORD_BYTES))


def read_jsonl_inside(root: Path, relative: str) -> list[dict]:
    """A JSON-lines file of the run folder."""
    text = read_regular_file(inside(root, relative), max_bytes=MAX_RECORD_BYTES).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_complete(root: Path) -> None:
    """Refuse a folder that is not a finished run, saying which it is."""
    if not root.is_dir():
        raise RunFolderError(f"{root}: no such folder; give a run folder, outputs/<run_name>")
    if not (root / "metrics.json").is_file() or not (root / "predictions.jsonl").is_file():
        state = ("still training, or stopped before its final evaluation (checkpoints/ but no metrics.json yet)"
                 if (root / "checkpoints").is_dir() else "not a run folder (no metrics.json, no predictions.jsonl)")
        raise RunFolderError(f"{root}: {state}; the app shows a run once its notebook has finished")
    if not (root / PREVIEW_FOLDER / PREVIEW_INDEX).is_file():
        raise RunFolderError(f"{root}: no {PREVIEW_FOLDER}/{PREVIEW_INDEX}; runs write their test images there since the app exists: "
                             "run the notebook again (resume_from_checkpoint=true skips the training it has)")


def read_upload(path: str | Path) -> Image.Image:
    """An uploaded image file: size and format checked, then decoded with the project's reader."""
    try:
        data = read_regular_file(path, max_bytes=MAX_UPLOAD_BYTES)
    except ImageTooLarge as error:  # messages name no path: the file is Gradio's copy on this machine
        raise ValueError(f"upload refused: the file is over {MAX_UPLOAD_BYTES // 2**20} MB") from error
    except OSError as error:
        raise ValueError("upload refused: the file cannot be read as a regular file") from error
    try:
        kind = open_header(data).format
    except OSError as error:
        raise ValueError(f"upload refused: not an image Pillow can read; send one of {', '.join(UPLOAD_FORMATS)}") from error
    if kind not in UPLOAD_FORMATS:
        raise ValueError(f"upload refused: a {kind} image; send one of {', '.join(UPLOAD_FORMATS)}")
    try:
        return decode_image(data)
    except OSError as error:
        raise ValueError(f"upload refused: the {kind} file does not decode ({error})") from error


def scores_of(record: dict) -> list[float]:
    """The scores of a record's predictions, in order."""
    return [p["score"] for p in record["predictions"]]


@dataclass
class Stage:
    """One model's answers on the test images, judged."""

    name: str
    records: list[dict]
    judged: list[ImageErrors]


class RunView:
    """What the app shows of a finished run: test images, both stages' judged predictions, per-class figures."""

    def __init__(self, folder: str | Path):
        self.root = Path(folder).expanduser().resolve()
        check_complete(self.root)
        self.previews = read_json_inside(self.root, f"{PREVIEW_FOLDER}/{PREVIEW_INDEX}")
        finetuned = read_jsonl_inside(self.root, "predictions.jsonl")
        baseline = read_jsonl_inside(self.root, "predictions_baseline.jsonl") if (self.root / "predictions_baseline.jsonl").is_file() else None
        if len(finetuned) != len(self.previews) or (baseline is not None and len(baseline) != len(finetuned)):
            raise RunFolderError(f"{self.root}: {len(finetuned)} predictions for {len(self.previews)} test images; "
                                 "the files are from different runs")
        self.settings = read_json_inside(self.root, f"model/{INFERENCE_FILE}") if self.has_model else None
        labels = {o["label"] for r in finetuned for o in r["ground_truth"]}
        self.class_names = list(self.settings["class_names"]) if self.settings else sorted(labels)
        self.class_names += sorted(labels - set(self.class_names))
        final_name = "GRPO" if (self.root / "predictions_sft.jsonl").is_file() else "fine-tuned"  # the saved model's stage
        final_run = run_coco(finetuned, self.class_names)  # judged and summarised from one evaluation
        self.stages = ([Stage("baseline", baseline, judge_images(baseline, self.class_names))] if baseline is not None else []) + [
            Stage(final_name, finetuned, judge_images(finetuned, self.class_names, final_run))]
        self.per_class = error_analysis(finetuned, self.class_names, final_run)["per_class"]

    @property
    def has_model(self) -> bool:
        """Whether the run saved its model (``model/inference.json``)."""
        return (self.root / "model" / INFERENCE_FILE).is_file()

    @property
    def final(self) -> Stage:
        """The saved model's stage (fine-tuned, or after GRPO)."""
        return self.stages[-1]

    def image_ids(self) -> list[str]:
        """Each test image's id, in order."""
        return [entry["image_id"] for entry in self.previews]

    def preview(self, index: int) -> Image.Image:
        """A test image's preview, read safely from ``test_images/``."""
        entry = self.previews[index]
        return decode_image(read_regular_file(inside(self.root / PREVIEW_FOLDER, entry["file"])))

    def selected(self, class_name: str = ALL_CLASSES, kind: str = ALL_IMAGES, threshold: float = 0.0) -> list[int]:
        """Test images holding ``class_name`` (as truth or prediction) and an error of ``kind`` in that class at the threshold."""
        chosen = []
        for index, (record, image) in enumerate(zip(self.final.records, self.final.judged)):
            if class_name != ALL_CLASSES:
                record, image = image.for_class(record, class_name)
                if not record["ground_truth"] and not any(p["score"] >= threshold for p in record["predictions"]):
                    continue  # the class is not on this image
            kinds = image.kinds(scores_of(record), threshold)
            if kind == ALL_IMAGES or (kind == ANY_ERROR and kinds) or kind in kinds:
                chosen.append(index)
        return chosen

    def precision_recall(self, threshold: float) -> tuple[float, float, int]:
        """The saved model's precision and recall at IoU 0.5 keeping boxes scored at least ``threshold``, and their count."""
        return precision_recall_at(self.final.records, self.final.judged, threshold)

    def per_class_rows(self, threshold: float) -> list[list]:
        """Per class: objects, AP@.5 (all boxes), and precision and recall at the threshold."""
        rows = []
        for name in self.class_names:
            narrowed = [image.for_class(record, name) for record, image in zip(self.final.records, self.final.judged)]
            records, judged = [r for r, _ in narrowed], [j for _, j in narrowed]
            precision, recall, _ = precision_recall_at(records, judged, threshold)
            n_objects = sum(len(r["ground_truth"]) for r in records)
            rows.append([name, n_objects, rounded(self.per_class.get(name, {}).get(AP_50)), rounded(precision), rounded(recall)])
        return rows

    def caption(self, index: int, threshold: float) -> str:
        """``#id: kinds`` for the gallery."""
        record, image = self.final.records[index], self.final.judged[index]
        kinds = sorted(image.kinds(scores_of(record), threshold), key=ERROR_KINDS.index)
        return f"#{record['image_id']}: {', '.join(kinds) if kinds else 'no errors'}"

    def drawing(self, index: int, threshold: float) -> Image.Image:
        """The test image once per stage side by side: truth green, boxes over the threshold coloured by kind, missed objects red."""
        base = self.preview(index)
        entry = self.previews[index]
        scale = base.width / entry["width"]
        panels = [draw_stage(base, stage.records[index], stage.judged[index], scale, threshold, stage.name) for stage in self.stages]
        canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), panels[0].height), "white")
        for i, panel in enumerate(panels):
            canvas.paste(panel, (i * (panel.width + 8), 0))
        return canvas


def rounded(value: float | None) -> float | None:
    """Three decimals, None for NaN (no objects or no boxes)."""
    return None if value is None or value != value else round(value, 3)


def draw_stage(image: Image.Image, record: dict, judged: ImageErrors, scale: float, threshold: float, title: str) -> Image.Image:
    """One stage's panel: the image under a label, ground truth and the boxes scored at least ``threshold``."""
    font = ImageFont.load_default(size=max(10, image.height // 25))
    panel = Image.new("RGB", (image.width, image.height + PANEL_LABEL_PX), "white")
    panel.paste(image, (0, PANEL_LABEL_PX))
    draw = ImageDraw.Draw(panel)
    draw.text((2, 2), title, fill="black", font=ImageFont.load_default(size=12))

    def box(xyxy: list[float]) -> list[float]:
        x1, y1, x2, y2 = (v * scale for v in xyxy)
        return [x1, y1 + PANEL_LABEL_PX, x2, y2 + PANEL_LABEL_PX]

    missed = set(judged.missed(scores_of(record), threshold))
    for g, obj in enumerate(record["ground_truth"]):
        draw.rectangle(box(obj["bbox_xyxy_px"]), outline=ERROR_COLORS[MISSED] if g in missed else GROUND_TRUTH_COLOR, width=2)
    for prediction, kind in zip(record["predictions"], judged.prediction_kinds):
        if prediction["score"] < threshold:
            continue
        x1, y1, x2, y2 = box(prediction["bbox_xyxy_px"])
        draw.rectangle([x1, y1, x2, y2], outline=ERROR_COLORS[kind], width=1)
        draw.text((x1 + 1, y2 - font.size - 1), f"{prediction['label']} {prediction['score']:.2f}", fill=ERROR_COLORS[kind], font=font)
    return panel
