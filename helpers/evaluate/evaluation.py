"""Detection with a trained model: boxes with scores from answers, for one image (``detect``) or a whole split (``evaluate_model``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from datasets import Dataset
from PIL import Image
from transformers.image_utils import load_image

from helpers.data.images import make_upright, open_image, to_rgb8
from helpers.evaluate.generation import DUPLICATE_IOU, LOOP_REPEATS, Generation, GenerationSettings, generate, span_score
from helpers.evaluate.metrics import summarize_detections
from helpers.families.boxes import drop_duplicate_boxes, parse_model_answer_with_spans
from helpers.families.registry import Family
from helpers.runtime.distributed import gather_in_order, generation_needs_all_ranks, shard_indices


def scored_predictions(generation: Generation, family: Family, image_size: tuple[int, int]) -> list[dict]:
    """Parse an answer into ``{"label", "bbox_xyxy_px", "score"}`` in original-image pixels."""
    return [
        obj | {"score": span_score(generation, span)}
        for obj, span in parse_model_answer_with_spans(generation.text, family, image_size, generation.model_size)
    ]


def load_image_input(source: str | Path | Image.Image) -> Image.Image:
    """The upright RGB image, at its own size, from what Qwen's cookbooks accept: a PIL image, a path or ``file://`` URL, an http(s) URL, or a ``data:image/...;base64,`` URI."""
    if isinstance(source, str) and source.startswith(("http://", "https://", "data:image")):
        image = load_image(source)  # transformers' loader: downloads or decodes base64
    elif isinstance(source, (str, Path)):
        path = Path(str(source).removeprefix("file://")).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image {str(source)[:200]!r}: no such file; give a path, a file:// or http(s) URL, a data:image/...;base64, URI or a PIL image")
        return open_image(path)  # upright, 8-bit RGB: as the training data was
    elif isinstance(source, Image.Image):
        image = source
    else:
        raise TypeError(f"image of type {type(source).__name__}: expected a path, a URL, a data:image URI or a PIL image")
    # qwen_vl_utils.fetch_image would also resize, with its own smart_resize, before the processor
    # resizes again; we hand the processor the original image and read its grid instead.
    return to_rgb8(make_upright(image))  # the upright image, as the training data was


def detect_with_answer(
    model, processor, image: str | Path | Image.Image, *, family: Family, prompt: str, max_new_tokens: int, system_prompt: str = "",
    loop_repeats: int = LOOP_REPEATS, duplicate_iou: float = DUPLICATE_IOU,
) -> tuple[list[dict], str]:
    """Boxes with labels and scores, in the image's pixels, for one image, and the answer they were read from."""
    image = load_image_input(image)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=1, loop_repeats=loop_repeats)
    (generation,) = generate(model, processor, [image], [prompt], settings, [system_prompt], family.chat_template_kwargs)
    return drop_duplicate_boxes(scored_predictions(generation, family, image.size), duplicate_iou)[0], generation.text


def detect(model, processor, image: str | Path | Image.Image, **settings) -> list[dict]:
    """Boxes with labels and scores, in the image's pixels, for one image (``detect_with_answer``'s keywords)."""
    return detect_with_answer(model, processor, image, **settings)[0]


def file_name(reference: dict | None) -> str | None:
    """The image file's name, for a record read from files (None for images held as bytes)."""
    return Path(reference["path"]).name if isinstance(reference, dict) and reference.get("path") else None


def evaluate_model(
    model, processor, dataset: Dataset, *, family: Family, settings: GenerationSettings,
    class_names: list[str] | None = None, duplicate_iou: float = DUPLICATE_IOU,
) -> tuple[list[dict], dict]:
    """Generate on every image of ``dataset`` with its ``prompt`` (and ``system_prompt``) columns, parse and score the boxes, and compute the metrics.

    Each record keeps the prompt it was trained with (a grounding record names its own class), so
    training and evaluation ask the same question.

    ``class_names`` are the labels the model was taught (default: those in the ground truth);
    predicted labels outside them are counted as unknown. Answers stopped for looping and duplicate
    boxes dropped are recorded per image (``loop_stopped``, ``duplicates_dropped``) and counted in the metrics.
    Under a launcher every rank answers its share of the images and gets all records back in the
    dataset's order, so the metrics equal a single process's.
    """
    if "prompt" not in dataset.column_names:
        raise ValueError("evaluate_model needs a 'prompt' column; add it with helpers.families.chat.add_chat_columns")
    n_images = len(dataset)
    dataset = dataset.select(shard_indices(n_images))  # under a launcher each rank answers its share; one process: all
    system_prompts = dataset["system_prompt"] if "system_prompt" in dataset.column_names else None
    settings = replace(settings, synced_gpus=generation_needs_all_ranks())
    images = dataset["image"]  # references, decoded batch by batch (read once: a hub split's column holds encoded bytes)
    generations = generate(model, processor, images, list(dataset["prompt"]), settings, system_prompts, family.chat_template_kwargs)
    records = []
    columns = ["image_id", "width", "height", "objects", *(["crowd_regions"] if "crowd_regions" in dataset.column_names else [])]
    for example, image, generation in zip(dataset.select_columns(columns), images, generations):
        image_size = (example["width"], example["height"])
        predictions, duplicates = drop_duplicate_boxes(scored_predictions(generation, family, image_size), duplicate_iou)
        records.append(
            {
                "image_id": example["image_id"],
                "file_name": file_name(image),
                "ground_truth": example["objects"],
                "crowd_regions": example.get("crowd_regions", []),
                "raw_text": generation.text,
                "predictions": predictions,
                "loop_stopped": generation.loop_stopped,
                "duplicates_dropped": duplicates,
            }
        )
    records = gather_in_order(records, n_images)  # every rank gets all records, in the dataset's order
    return records, summarize_detections(records, class_names)
