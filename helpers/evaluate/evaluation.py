"""Detection with a trained model: boxes with scores from answers, for one image (``detect``) or a whole split (``evaluate_model``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from datasets import Dataset
from PIL import Image
from transformers.image_utils import load_image

from helpers.data.images import make_upright, open_image, to_rgb8
from helpers.evaluate.generation import DUPLICATE_IOU, LOOP_REPEATS, Generation, GenerationSettings, generate, span_score
from helpers.evaluate.metrics import is_parse_failure, summarize_detections
from helpers.evaluate.slicing import Slicing, TileCrops, merge_predictions, to_image_frame
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


def tile_predictions(generation: Generation, family: Family, window: tuple[int, int, int, int]) -> list[dict]:
    """Parse a tile's answer in the tile's own frame, as a whole image's would be, and move its boxes into the image's pixels."""
    tile_size = (window[2] - window[0], window[3] - window[1])
    return to_image_frame(scored_predictions(generation, family, tile_size), window)


@dataclass
class ImageAnswer:
    """What the model answered for one image: scored boxes in its pixels (tiles merged), the answer text, and the loop and tile counts."""

    predictions: list[dict]
    text: str  # the whole-image answer ("" when sliced without a whole-image pass)
    loop_stopped: bool
    tiles: int = 0
    tiles_loop_stopped: int = 0
    tile_parse_failures: int = 0
    tile_answers: list[str] = field(default_factory=list)


def answer_images(
    model, processor, images: Sequence, sizes: list[tuple[int, int]], prompts: list[str], system_prompts: list[str] | None, *,
    family: Family, settings: GenerationSettings, slicing: Slicing | None = None,
) -> list[ImageAnswer]:
    """Generate on whole images, or on their tiles (plus the whole image when ``slicing`` asks), and read boxes in each image's pixels.

    ``sizes`` are the images' ``(width, height)``: boxes are read in that frame, and tiles laid out in it.
    Tiles of all images go through one batched generation, each with its own loop control.
    """
    system_prompts = [""] * len(prompts) if system_prompts is None else list(system_prompts)
    whole = None
    if slicing is None or slicing.full_image_pass:
        whole = generate(model, processor, images, prompts, settings, system_prompts, family.chat_template_kwargs)
    if slicing is None:
        return [ImageAnswer(scored_predictions(g, family, size), g.text, g.loop_stopped) for g, size in zip(whole, sizes)]
    tiles = [(index, window) for index, size in enumerate(sizes) for window in slicing.grid.windows(*size)]
    tile_generations = generate(
        model, processor, TileCrops(images, sizes, tiles), [prompts[i] for i, _ in tiles], settings,
        [system_prompts[i] for i, _ in tiles], family.chat_template_kwargs,
    )
    answers = [ImageAnswer([], whole[i].text if whole else "", whole[i].loop_stopped if whole else False) for i in range(len(sizes))]
    for (index, window), generation in zip(tiles, tile_generations):
        found = tile_predictions(generation, family, window)
        answer = answers[index]
        answer.predictions += found
        answer.tiles += 1
        answer.tiles_loop_stopped += generation.loop_stopped
        answer.tile_parse_failures += is_parse_failure(generation.text, found)
        answer.tile_answers.append(generation.text)
    for index, answer in enumerate(answers):
        if whole:
            answer.predictions += scored_predictions(whole[index], family, sizes[index])
        answer.predictions = merge_predictions(answer.predictions, slicing.merge, slicing.merge_threshold)
        answer.loop_stopped = answer.loop_stopped or answer.tiles_loop_stopped > 0
    return answers


def sliced_answer_text(answer: ImageAnswer, slicing: Slicing | None, image_size: tuple[int, int]) -> str:
    """The text boxes were read from: the answer, or for a sliced image each tile's answer after its origin, then the whole image's."""
    if slicing is None:
        return answer.text
    lines = [f"[tile {w[0]},{w[1]}] {text}" for w, text in zip(slicing.grid.windows(*image_size), answer.tile_answers)]
    return "\n".join(lines + ([f"[whole image] {answer.text}"] if slicing.full_image_pass else []))


def detect_with_answer(
    model, processor, image: str | Path | Image.Image, *, family: Family, prompt: str, max_new_tokens: int, system_prompt: str = "",
    loop_repeats: int = LOOP_REPEATS, duplicate_iou: float = DUPLICATE_IOU, slicing: Slicing | None = None, batch_size: int = 1,
    **generation_options,
) -> tuple[list[dict], str]:
    """Boxes with labels and scores, in the image's pixels, for one image (whole, or tiled by ``slicing``), and the answer they were read from.

    ``batch_size`` tiles are answered per ``generate`` call; ``generation_options`` are further ``GenerationSettings`` fields.
    """
    image = load_image_input(image)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, loop_repeats=loop_repeats, **generation_options)
    (answer,) = answer_images(model, processor, [image], [image.size], [prompt], [system_prompt], family=family, settings=settings,
                              slicing=slicing)
    return drop_duplicate_boxes(answer.predictions, duplicate_iou)[0], sliced_answer_text(answer, slicing, image.size)


def detect(model, processor, image: str | Path | Image.Image, **settings) -> list[dict]:
    """Boxes with labels and scores, in the image's pixels, for one image (``detect_with_answer``'s keywords)."""
    return detect_with_answer(model, processor, image, **settings)[0]


def file_name(reference: dict | None) -> str | None:
    """The image file's name, for a record read from files (None for images held as bytes)."""
    return Path(reference["path"]).name if isinstance(reference, dict) and reference.get("path") else None


def evaluate_model(
    model, processor, dataset: Dataset, *, family: Family, settings: GenerationSettings,
    class_names: list[str] | None = None, duplicate_iou: float = DUPLICATE_IOU, slicing: Slicing | None = None,
) -> tuple[list[dict], dict]:
    """Generate on every image of ``dataset`` with its ``prompt`` (and ``system_prompt``) columns, parse and score the boxes, and compute the metrics.

    Each record keeps the prompt it was trained with (a grounding record names its own class), so
    training and evaluation ask the same question.

    ``class_names`` are the labels the model was taught (default: those in the ground truth);
    predicted labels outside them are counted as unknown. Answers stopped for looping and duplicate
    boxes dropped are recorded per image (``loop_stopped``, ``duplicates_dropped``) and counted in the metrics.
    With ``slicing``, each image is answered tile by tile (``answer_images``); its record adds the tile count,
    the tiles stopped for looping, those whose answer could not be read, and each tile's answer.
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
    columns = ["image_id", "width", "height", "objects", *(["crowd_regions"] if "crowd_regions" in dataset.column_names else [])]
    examples = list(dataset.select_columns(columns))
    sizes = [(example["width"], example["height"]) for example in examples]
    answers = answer_images(model, processor, images, sizes, list(dataset["prompt"]), system_prompts, family=family, settings=settings,
                            slicing=slicing)
    records = []
    for example, image, answer in zip(examples, images, answers):
        predictions, duplicates = drop_duplicate_boxes(answer.predictions, duplicate_iou)
        record = {
            "image_id": example["image_id"],
            "file_name": file_name(image),
            "ground_truth": example["objects"],
            "crowd_regions": example.get("crowd_regions", []),
            "raw_text": answer.text,
            "predictions": predictions,
            "loop_stopped": answer.loop_stopped,
            "duplicates_dropped": duplicates,
        }
        if slicing is not None:
            record |= {"tiles": answer.tiles, "tiles_loop_stopped": answer.tiles_loop_stopped,
                       "tile_parse_failures": answer.tile_parse_failures, "tile_answers": answer.tile_answers}
        records.append(record)
    records = gather_in_order(records, n_images)  # every rank gets all records, in the dataset's order
    return records, summarize_detections(records, class_names)
