"""Batched greedy generation with per-box confidence scores, and evaluation of detection answers.

Confidence: a VLM's answer carries no scores, and scoring every box 1 makes AP's ranking
meaningless. Each box's score is the mean probability, under the decoding distribution, of the
generated tokens that spell its object (label and coordinates, from the object's first character
to its last). Greedy decoding picks the most probable token, so that probability is the maximum
of the softmax at each step; a recorder placed last among the logits processors reads it. A
hallucinated object typically starts with an unlikely token and scores low. Scores are in [0, 1]
and deterministic.

Loops: Qwen-VL models can repeat one object, or cycle through a few, until ``max_new_tokens``
(QwenLM/Qwen3-VL#718; Qwen3-VL's grounding cookbook: with over 40-50 instances "the model may enter an
endless generation loop"). Generation stops an answer once one object's text has been written
``loop_repeats`` times, and before scoring, boxes duplicating a higher-scored box of the same label
(IoU at least ``duplicate_iou``) are dropped; both are counted per image and per run.

Decoding is plain greedy whatever the checkpoint's ``generation_config.json`` holds, and boxes are
mapped back through the grid the processor actually produced for each image (``image_grid_thw``),
never through a second prediction of its resize.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from datasets import Dataset
from PIL import Image
from tqdm import tqdm  # text bars: they render in Jupyter and in papermill logs alike
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.image_utils import load_image

from helpers.boxes import drop_duplicate_boxes, object_texts, parse_model_answer_with_spans
from helpers.families import get_family
from helpers.distributed import gather_in_order, generation_needs_all_ranks, shard_indices
from helpers.formatting import format_detection_messages
from helpers.images import make_upright, open_image, to_rgb8
from helpers.metrics import summarize_detections
from helpers.processing import model_input_size

# Evaluation, the IoU callback and detect() decode greedily: one beam, the most probable token at each
# step. Every other knob stays at transformers' neutral default, and nothing is taken from the
# checkpoint's generation_config.json but its stop tokens: the Qwen2-VL and Qwen2.5-VL Instruct
# checkpoints ship sampling fields and repetition_penalty 1.05, which would divide the logit of every
# token already seen (digits and brackets included) by 1.05.
GREEDY_DECODING = {"do_sample": False, "num_beams": 1}
LOOP_REPEATS = 3  # stop an answer once one object's text has been written this many times (0: never stop early)
DUPLICATE_IOU = 0.95  # drop a box overlapping a higher-scored box of the same label this much (1.0: identical only; 0: keep all)


@dataclass
class Generation:
    """One generated answer: its text, token ids, each token's probability and end character, and the model's input size."""

    text: str
    token_ids: list[int]
    token_probs: list[float]
    token_ends: list[int]
    model_size: tuple[int, int]  # (width, height) px of the image the model saw: image_grid_thw * patch size
    loop_stopped: bool = False  # generation was stopped because the answer repeated an object


class ChosenTokenProbability(LogitsProcessor):
    """Record, at each greedy step, the probability of the token greedy decoding picks (the softmax maximum)."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(torch.softmax(scores.float(), dim=-1).max(dim=-1).values.cpu())
        return scores


class RepeatedObjectStop(StoppingCriteria):
    """Stop an answer once one object's text has been written ``repeats`` times: the model is looping."""

    def __init__(self, tokenizer, prompt_length: int, repeats: int):
        self.tokenizer, self.prompt_length, self.repeats = tokenizer, prompt_length, repeats
        self.stopped_at: dict[int, int] = {}  # row -> answer tokens when it was stopped
        self._closes: dict[int, bool] = {}  # token id -> can it end an object ("}" or <|box_end|>)

    def _closes_object(self, token_id: int) -> bool:
        """True for a token whose text can end an object; only then is the answer read again."""
        if token_id not in self._closes:
            piece = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._closes[token_id] = "}" in piece or "<|box_end|>" in piece
        return self._closes[token_id]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, last in enumerate(input_ids[:, -1].tolist()):
            if row not in self.stopped_at and self._closes_object(last):
                answer = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=False)
                if max(Counter(object_texts(answer)).values(), default=0) >= self.repeats:
                    self.stopped_at[row] = input_ids.shape[1] - self.prompt_length
            done[row] = row in self.stopped_at
        return done


def stop_token_ids(model, processor) -> set[int]:
    """Token ids that end an answer: the generation config's EOS ids plus the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(processor.tokenizer.eos_token_id)
    return ids


def token_char_ends(tokenizer, token_ids: list[int]) -> list[int]:
    """Where each token's text ends in the decoded answer (special tokens kept)."""
    pieces = [tokenizer.decode([token], skip_special_tokens=False) for token in token_ids]
    ends, total = [], 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)
    if total == len(tokenizer.decode(token_ids, skip_special_tokens=False)):
        return ends
    # A character split across byte-level tokens decodes differently alone: decode prefixes instead.
    return [len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=False)) for i in range(len(token_ids))]


def span_score(generation: Generation, span: tuple[int, int]) -> float:
    """Mean probability of the tokens that overlap the characters ``span`` of the answer."""
    start, end = span
    probs = [
        p for p, token_end, token_start in zip(generation.token_probs, generation.token_ends, [0, *generation.token_ends[:-1]])
        if token_start < end and token_end > start
    ]
    return sum(probs) / len(probs) if probs else 0.0


def decoding_config(model, processor, max_new_tokens: int) -> GenerationConfig:
    """The generation config of evaluation: ``GREEDY_DECODING``, the checkpoint's stop tokens, the tokenizer's pad token."""
    return GenerationConfig(
        **GREEDY_DECODING, max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stop_token_ids(model, processor)), pad_token_id=processor.tokenizer.pad_token_id,
    )


def explicit_settings(config: GenerationConfig) -> dict:
    """The values a generation config sets (its version stamp left out)."""
    return {key: value for key, value in config.to_diff_dict().items() if key not in ("transformers_version", "_from_model_config")}


def unused_generation_settings(model) -> dict:
    """The checkpoint's own generation settings that evaluation does not apply (all but its token ids)."""
    token_ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {key: value for key, value in explicit_settings(model.generation_config).items() if key not in token_ids}


@contextmanager
def generation_config_in_force(model, config: GenerationConfig):
    """Make ``config`` the model's own generation config for the block, so ``generate`` inherits nothing else."""
    # generate() fills every knob a passed config leaves unset from the model's generation_config
    # (transformers 5.24, GenerationMixin._prepare_generation_config), so passing a config is not
    # enough; under PEFT the wrapped model's config is the one generate() reads.
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = config
    try:
        yield config
    finally:
        target.generation_config = saved


def generate(
    model,
    processor,
    images: Sequence,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    system_prompts: list[str] | None = None,
    chat_template_kwargs: dict | None = None,
    loop_repeats: int = LOOP_REPEATS,
    batch_logits_processors: Callable[[int], list[LogitsProcessor]] | None = None,
    synced_gpus: bool = False,
) -> list[Generation]:
    """Greedy answers with token probabilities, batched with left padding (equal to one-by-one).

    ``images`` are PIL images or a split's image references (``helpers.images``), decoded one batch at a time.

    Each prompt goes with its system prompt ("": the template's default); ``chat_template_kwargs``
    are the family's template options (``helpers.families``: Qwen3.5's non-thinking mode). An answer
    stops once one object has been written ``loop_repeats`` times (0: never). ``batch_logits_processors``,
    called for each batch with its prompt length, gives fresh processors that act before the token is
    chosen (to constrain decoding, or to simulate a failure). ``synced_gpus`` keeps every rank stepping
    until all are done, which sharded weights (FSDP, ZeRO-3) need.
    """
    system_prompts = [""] * len(prompts) if system_prompts is None else list(system_prompts)
    if not len(images) == len(prompts) == len(system_prompts):
        raise ValueError(f"got {len(images)} images, {len(prompts)} prompts and {len(system_prompts)} system prompts")
    tokenizer = processor.tokenizer
    stops = stop_token_ids(model, processor)
    config = decoding_config(model, processor, max_new_tokens)
    # A mixture of experts under TRL's trainer returns its router logits for the auxiliary loss; transformers
    # 5.24 then computes that loss at every decoding step and fails on the cached attention mask. Decoding
    # needs no auxiliary loss.
    text_config = model.config.get_text_config()
    no_router_logits = {"output_router_logits": False} if hasattr(text_config, "output_router_logits") else {}
    was_training = model.training
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # right padding puts pads between prompt and answer
    model.eval()
    generations: list[Generation] = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="generate", leave=False):
            texts = [
                processor.apply_chat_template(
                    format_detection_messages(prompt, system_prompt=system), tokenize=False, add_generation_prompt=True,
                    **(chat_template_kwargs or {}),
                )
                for prompt, system in zip(prompts[start : start + batch_size], system_prompts[start : start + batch_size])
            ]
            batch_images = [[open_image(img)] for img in images[start : start + batch_size]]  # decoded one batch at a time
            inputs = processor(text=texts, images=batch_images, return_tensors="pt", padding=True).to(model.device)
            recorder = ChosenTokenProbability()  # last, so it reads the distribution the token is chosen from
            prompt_length = inputs["input_ids"].shape[1]
            loop_stop = RepeatedObjectStop(tokenizer, prompt_length, loop_repeats)
            with torch.inference_mode(), generation_config_in_force(model, config):
                output = model.generate(
                    **inputs, **no_router_logits, generation_config=config,
                    logits_processor=LogitsProcessorList([*(batch_logits_processors(prompt_length) if batch_logits_processors else []), recorder]),
                    stopping_criteria=StoppingCriteriaList([loop_stop] if loop_repeats > 0 else []),
                    **({"synced_gpus": True} if synced_gpus else {}),
                )
            probs = torch.stack(recorder.steps, dim=1).tolist()
            grids = inputs["image_grid_thw"].tolist()  # one image per prompt, in order
            for index, (row, row_probs, grid) in enumerate(zip(output[:, prompt_length:].tolist(), probs, grids)):
                cut = min(next((i for i, tok in enumerate(row) if tok in stops), len(row)), loop_stop.stopped_at.get(index, len(row)))
                # Keep special tokens: Qwen2-VL's boxes are written with <|box_start|> and friends.
                text = tokenizer.decode(row[:cut], skip_special_tokens=False)
                generations.append(
                    Generation(text, row[:cut], row_probs[:cut], token_char_ends(tokenizer, row[:cut]), model_input_size(processor, grid),
                               loop_stopped=index in loop_stop.stopped_at)
                )
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return generations


def scored_predictions(generation: Generation, family: str, image_size: tuple[int, int]) -> list[dict]:
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


def detect(
    model, processor, image: str | Path | Image.Image, family: str, prompt: str, max_new_tokens: int, system_prompt: str = "",
    loop_repeats: int = LOOP_REPEATS, duplicate_iou: float = DUPLICATE_IOU,
) -> list[dict]:
    """Boxes with labels and scores, in the image's pixels, for one image: what a user calls after training."""
    image = load_image_input(image)
    chat_options = get_family(family).chat_template_kwargs
    (generation,) = generate(model, processor, [image], [prompt], max_new_tokens, 1, [system_prompt], chat_options, loop_repeats)
    return drop_duplicate_boxes(scored_predictions(generation, family, image.size), duplicate_iou)[0]


def evaluate_model(
    model,
    processor,
    dataset: Dataset,
    family: str,
    max_new_tokens: int,
    batch_size: int,
    class_names: list[str] | None = None,
    loop_repeats: int = LOOP_REPEATS,
    duplicate_iou: float = DUPLICATE_IOU,
    batch_logits_processors: Callable[[int], list[LogitsProcessor]] | None = None,
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
        raise ValueError("evaluate_model needs a 'prompt' column; add it with helpers.formatting.add_chat_columns")
    n_images = len(dataset)
    dataset = dataset.select(shard_indices(n_images))  # under a launcher each rank answers its share; one process: all
    images = dataset["image"]  # references, read lazily batch by batch
    system_prompts = dataset["system_prompt"] if "system_prompt" in dataset.column_names else None
    chat_options = get_family(family).chat_template_kwargs
    generations = generate(
        model, processor, images, list(dataset["prompt"]), max_new_tokens, batch_size, system_prompts, chat_options, loop_repeats,
        batch_logits_processors, generation_needs_all_ranks(),
    )
    records = []
    columns = ["image_id", "width", "height", "objects", *(["crowd_regions"] if "crowd_regions" in dataset.column_names else [])]
    for example, generation in zip(dataset.select_columns(columns), generations):
        image_size = (example["width"], example["height"])
        predictions, duplicates = drop_duplicate_boxes(scored_predictions(generation, family, image_size), duplicate_iou)
        records.append(
            {
                "image_id": example["image_id"],
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
