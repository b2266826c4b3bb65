"""Batched greedy generation: answers with each token's probability (a box's confidence), loop control, and plain greedy decoding.

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
from typing import Callable, Sequence

import torch
from tqdm import tqdm  # text bars: they render in Jupyter and in papermill logs alike
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from helpers.families.boxes import object_texts
from helpers.families.chat import format_detection_messages
from helpers.data.images import open_image
from helpers.families.processors import model_input_size

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


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated: the token budget, images per ``generate`` call, the loop stop and extra logits processors."""

    max_new_tokens: int
    batch_size: int = 8
    loop_repeats: int = LOOP_REPEATS  # stop an answer once one object has been written this many times (0: never)
    # Called for each batch with its prompt length: fresh processors that act before the token is chosen
    # (to constrain decoding, or to simulate a failure).
    batch_logits_processors: Callable[[int], list[LogitsProcessor]] | None = None
    synced_gpus: bool = False  # keep every rank stepping until all are done, which sharded weights (FSDP, ZeRO-3) need


def chat_texts(processor, prompts: list[str], system_prompts: list[str], chat_template_kwargs: dict | None) -> list[str]:
    """Each prompt rendered as the chat the model answers: its system turn, the user turn with the image, the generation prompt."""
    return [
        processor.apply_chat_template(
            format_detection_messages(prompt, system_prompt=system), tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
        for prompt, system in zip(prompts, system_prompts)
    ]


def generate_batch(model, processor, texts: list[str], images: Sequence, config: GenerationConfig, settings: GenerationSettings) -> list[Generation]:
    """One ``generate`` call on a batch of chats, each with its image, cut at its stop token or its loop."""
    tokenizer = processor.tokenizer
    batch_images = [[open_image(image)] for image in images]  # decoded one batch at a time
    inputs = processor(text=texts, images=batch_images, return_tensors="pt", padding=True).to(model.device)
    recorder = ChosenTokenProbability()  # last, so it reads the distribution the token is chosen from
    prompt_length = inputs["input_ids"].shape[1]
    loop_stop = RepeatedObjectStop(tokenizer, prompt_length, settings.loop_repeats)
    extra = settings.batch_logits_processors(prompt_length) if settings.batch_logits_processors else []
    # A mixture of experts under TRL's trainer returns its router logits for the auxiliary loss; transformers
    # 5.24 then computes that loss at every decoding step and fails on the cached attention mask. Decoding
    # needs no auxiliary loss.
    no_router_logits = {"output_router_logits": False} if hasattr(model.config.get_text_config(), "output_router_logits") else {}
    with torch.inference_mode(), generation_config_in_force(model, config):
        output = model.generate(
            **inputs, **no_router_logits, generation_config=config,
            logits_processor=LogitsProcessorList([*extra, recorder]),
            stopping_criteria=StoppingCriteriaList([loop_stop] if settings.loop_repeats > 0 else []),
            **({"synced_gpus": True} if settings.synced_gpus else {}),
        )
    probs = torch.stack(recorder.steps, dim=1).tolist()
    stops = set(config.eos_token_id)
    generations = []
    for index, (row, row_probs, grid) in enumerate(zip(output[:, prompt_length:].tolist(), probs, inputs["image_grid_thw"].tolist())):
        cut = min(next((i for i, token in enumerate(row) if token in stops), len(row)), loop_stop.stopped_at.get(index, len(row)))
        # Keep special tokens: Qwen2-VL's boxes are written with <|box_start|> and friends.
        text = tokenizer.decode(row[:cut], skip_special_tokens=False)
        generations.append(
            Generation(text, row[:cut], row_probs[:cut], token_char_ends(tokenizer, row[:cut]), model_input_size(processor, grid),
                       loop_stopped=index in loop_stop.stopped_at)
        )
    return generations


def generate(
    model, processor, images: Sequence, prompts: list[str], settings: GenerationSettings,
    system_prompts: list[str] | None = None, chat_template_kwargs: dict | None = None,
) -> list[Generation]:
    """Greedy answers with token probabilities, batched with left padding (equal to one-by-one).

    ``images`` are PIL images or a split's image references (``helpers.data.images``), decoded one batch
    at a time. Each prompt goes with its system prompt ("": the template's default);
    ``chat_template_kwargs`` are the family's template options (Qwen3.5's non-thinking mode).
    """
    system_prompts = [""] * len(prompts) if system_prompts is None else list(system_prompts)
    if not len(images) == len(prompts) == len(system_prompts):
        raise ValueError(f"got {len(images)} images, {len(prompts)} prompts and {len(system_prompts)} system prompts")
    config = decoding_config(model, processor, settings.max_new_tokens)
    texts = chat_texts(processor, prompts, system_prompts, chat_template_kwargs)
    was_training, padding_side = model.training, processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"  # right padding puts pads between prompt and answer
    model.eval()
    generations: list[Generation] = []
    try:
        for start in tqdm(range(0, len(images), settings.batch_size), desc="generate", leave=False):
            batch = slice(start, start + settings.batch_size)
            generations += generate_batch(model, processor, texts[batch], images[batch], config, settings)
    finally:
        processor.tokenizer.padding_side = padding_side
        model.train(was_training)
    return generations
