"""Use a trained model: a run's ``model/`` holds, beside the weights, everything inference needs (``inference.json``).

In Python::

    from helpers.detect import Detector
    detector = Detector.from_folder("outputs/my-run")      # the run folder, or its model/ folder
    result = detector("photo.jpg")                         # result.boxes, result.raw_answer
    result = detector("photo.jpg", classes=["ball"])      # a subset of the trained classes

On the command line: ``python -m helpers.detect outputs/my-run photo.jpg --out drawn.png`` prints the boxes
(label, score, pixels) and the raw answer as JSON, and draws the boxes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image

from helpers.evaluate.evaluation import detect_with_answer, load_image_input
from helpers.evaluate.plotting import PREDICTION_COLOR, plot_image_grid
from helpers.evaluate.slicing import MERGE_THRESHOLD, Slicing, slicing_for
from helpers.families.chat import detection_prompt, grounding_prompt
from helpers.families.registry import Family, get_family
from helpers.runtime.console import quiet_known_warnings
from helpers.runtime.device import pick_device_and_dtype
from helpers.runtime.run_folder import write_json

INFERENCE_FILE = "inference.json"  # in model/, beside the weights
BOX_DECIMALS = 1  # pixels: a tenth is finer than any annotation
TILE_BATCH_SIZE = 8  # tiles of one image answered per generate() call (one whole image needs one)


@dataclass(frozen=True)
class InferenceSettings:
    """What a trained model was taught to answer, and how its answers were read: all ``model/`` needs besides its weights."""

    model_type: str  # the family (config.model_type)
    task: str  # "detection" or "grounding"
    class_names: list[str]  # the labels it was taught, in the prompt's order
    system_prompt: str  # "" for the template's default
    min_pixels: int
    max_pixels: int
    max_new_tokens: int
    loop_repeats: int
    duplicate_iou: float
    base_model: str  # what a LoRA adapter in model/ is applied to; "" when model/ holds the whole weights
    # A model trained on tiles detects tile by tile (helpers.evaluate.slicing); 0: whole images. Older files lack these.
    tile_px: int = 0
    tile_overlap_px: int = 0
    tile_full_image_pass: bool = True
    tile_merge: str = "nmm"
    tile_merge_threshold: float = MERGE_THRESHOLD

    def slicing(self) -> Slicing | None:
        """How images are sliced at inference, or None for whole images."""
        return slicing_for(self.tile_px, self.tile_overlap_px, self.tile_full_image_pass, self.tile_merge, self.tile_merge_threshold)

    def prompt(self, family: Family, classes: list[str] | None = None) -> str:
        """The instruction the model was trained with, for all its classes or the ``classes`` asked for."""
        asked = list(self.class_names if classes is None else classes)
        unknown = [name for name in asked if name not in self.class_names]
        if unknown or not asked:
            raise ValueError(f"this model was trained to find {self.class_names}; it was not trained on {unknown or 'an empty list'}")
        if self.task == "grounding":
            if len(asked) != 1:
                raise ValueError(f"a grounding model finds one class per question; ask for one of {self.class_names}")
            return grounding_prompt(family, asked[0])
        return detection_prompt(family, asked)


def save_inference_settings(model_dir: str | Path, settings: InferenceSettings) -> Path:
    """Write ``inference.json`` into ``model_dir`` (the main process only, as every run file)."""
    return write_json(Path(model_dir) / INFERENCE_FILE, asdict(settings))


def model_folder(path: str | Path) -> Path:
    """The ``model/`` folder of a run folder, or the folder itself; an error saying what is missing otherwise."""
    path = Path(path).expanduser()
    folder = path / "model" if (path / "model").is_dir() else path
    if not (folder / INFERENCE_FILE).is_file():
        state = "still training, or stopped before saving" if (path / "checkpoints").is_dir() else "not a run folder or model/ folder"
        raise FileNotFoundError(f"{path}: no {INFERENCE_FILE} in {folder} ({state}); give a finished run folder or its model/ folder")
    return folder


@dataclass
class DetectionResult:
    """Boxes ``{"label", "score", "bbox_xyxy_px"}`` in the image's pixels, the model's raw answer, and the question asked."""

    boxes: list[dict]
    raw_answer: str
    prompt: str

    def as_dict(self) -> dict:
        """Plain JSON, boxes rounded to a tenth of a pixel and scores to three decimals."""
        boxes = [{"label": b["label"], "score": round(b["score"], 3), "bbox_xyxy_px": [round(v, BOX_DECIMALS) for v in b["bbox_xyxy_px"]]}
                 for b in self.boxes]
        return {"boxes": boxes, "raw_answer": self.raw_answer, "prompt": self.prompt}


class Detector:
    """A trained model with its processor and settings; call it on an image."""

    def __init__(self, model, processor, settings: InferenceSettings):
        self.model, self.processor, self.settings = model, processor, settings
        self.family = get_family(settings.model_type)

    @classmethod
    def from_folder(cls, path: str | Path, quantization: str = "none", attn_implementation: str = "sdpa") -> Detector:
        """Load a run folder's (or a ``model/`` folder's) model on the GPU when there is one."""
        from helpers.train.export import load_trained_model  # PEFT and TRL load here, after the CLI has quieted their import warnings

        folder = model_folder(path)
        settings = InferenceSettings(**json.loads((folder / INFERENCE_FILE).read_text()))
        device, dtype = pick_device_and_dtype()
        model, processor = load_trained_model(
            folder, base_model=settings.base_model or folder, quantization=quantization, attn_implementation=attn_implementation,
            dtype=dtype, device=device,
        )
        processor.image_processor.size = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}
        return cls(model, processor, settings)

    def __call__(self, image: str | Path | Image.Image, classes: list[str] | None = None, tile_px: int | None = None) -> DetectionResult:
        """Boxes for the trained classes (or ``classes``, a subset of them) in one image, with the raw answer.

        ``tile_px``: None slices as the run did; 0 answers the image whole; a side in pixels slices it in such tiles.
        """
        prompt = self.settings.prompt(self.family, classes)
        settings = self.settings
        if tile_px is not None and tile_px != settings.tile_px:
            overlap = settings.tile_overlap_px if 0 < settings.tile_overlap_px < tile_px else tile_px // 8
            settings = replace(settings, tile_px=tile_px, tile_overlap_px=overlap if tile_px else 0)
        boxes, raw_answer = detect_with_answer(
            self.model, self.processor, image, family=self.family, prompt=prompt, max_new_tokens=settings.max_new_tokens,
            system_prompt=settings.system_prompt, loop_repeats=settings.loop_repeats, duplicate_iou=settings.duplicate_iou,
            slicing=settings.slicing(), batch_size=TILE_BATCH_SIZE,
        )
        return DetectionResult(boxes, raw_answer, prompt)


def main(argv: list[str] | None = None) -> dict:
    """Detect on one image, print the result as JSON, and draw it when ``--out`` is given."""
    parser = argparse.ArgumentParser(description="Boxes from a trained run's model on one image, printed as JSON.")
    parser.add_argument("folder", help="a finished run folder (outputs/<run_name>) or its model/ folder")
    parser.add_argument("image", help="an image file, a file:// or http(s) URL, or a data:image URI")
    parser.add_argument("--classes", help="comma-separated subset of the trained classes to look for (default: all)")
    parser.add_argument("--out", type=Path, help="also draw the boxes on the image into this PNG")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        detector = Detector.from_folder(args.folder)
        result = detector(args.image, classes=args.classes.split(",") if args.classes else None)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from error
    report = result.as_dict()
    print(json.dumps(report, indent=2))
    if args.out:
        image = load_image_input(args.image)
        title = f"{len(result.boxes)} boxes: {', '.join(sorted({b['label'] for b in result.boxes})) or 'none'}"
        plot_image_grid([image], [[(result.boxes, PREDICTION_COLOR, "--")]], titles=[title], path=args.out, columns=1)
        print(f"drawn: {args.out}")
    return report


if __name__ == "__main__":
    quiet_known_warnings()
    main()
