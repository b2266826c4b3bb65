"""Where a training step's work goes, computed without a GPU: token kinds per sample, batch layouts, FLOPs.

Everything here is arithmetic on the published architecture (``helpers/families/hub_configs/<family>/config.json``,
built on the ``meta`` device: shapes without memory) and on token counts that come from the real
tokenizer and the processor's resize arithmetic (``helpers.families.boxes.visual_token_count``), so the figures
hold at real size on a CPU. The training benchmark checks every collated batch against these layouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText

from helpers.families.boxes import visual_token_count
from helpers.families.registry import get_family
from helpers.families.chat import IGNORE_INDEX, format_detection_messages, vision_token_ids
from helpers.train.lora import parameter_block
from helpers.families.registry import HUB_CONFIGS_DIR

TOKEN_KINDS = ("vision", "prompt", "answer", "padding")  # every position of a batch is exactly one of these
# Dense bf16 tensor-core peaks, TFLOP/s, from the vendors' datasheets (SXM parts): the denominator of MFU.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


@dataclass(frozen=True)
class SampleTokens:
    """One training sample's token counts: what its chat holds, by kind, and the vision patches behind it."""

    vision: int  # <|image_pad|> tokens plus the <|vision_start|>/<|vision_end|> delimiters
    prompt: int  # every other token before the answer: system turn, instruction, chat markup
    answer: int  # the assistant's answer and its <|im_end|> (the assistant-only labels)
    patches: int  # vision patches the tower encodes (merge_size**2 per image token)

    @property
    def length(self) -> int:
        """Positions the sample takes in the language model."""
        return self.vision + self.prompt + self.answer


@dataclass(frozen=True)
class Architecture:
    """The shapes that decide a step's FLOPs, read from a model's modules (a ``meta``-device model will do)."""

    patch_params: int  # matrix weights applied to every vision patch: patch embedding and vision blocks
    merged_params: int  # matrix weights applied to every merged vision token: the merger (and Qwen3-VL's deepstack mergers)
    merge_size: int  # patches merged per side into one vision token
    vision_width: int  # vision attention width (heads x head_dim)
    vision_windows: tuple[int, ...]  # per vision block: patches each patch attends to, 0 for the whole image
    lm_params: int  # matrix weights of the decoder layers, applied to every position
    head_params: int  # lm_head: vocabulary x hidden, applied to every position (the loss takes logits everywhere)
    lm_layers: int
    lm_width: int  # query heads x head_dim: the width of the attention scores' contraction


@dataclass(frozen=True)
class Span:
    """What one sample costs the language model in a batch: positions it occupies and the context each attends over."""

    positions: int  # its tokens plus its share of padding
    context: int  # keys each of those positions is scored against


def real_size_config(family: str):
    """The published architecture's config (``helpers/families/hub_configs/<family>/config.json``); a clear error where none is kept."""
    path = HUB_CONFIGS_DIR / get_family(family).model_type / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: no published config.json of {get_family(family).name} is kept, so it has no real-size figures")
    return AutoConfig.from_pretrained(path.parent)


def meta_model(config) -> nn.Module:
    """The architecture with every weight on the ``meta`` device: shapes and module names, no memory."""
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def _matrix_weights(model: nn.Module) -> dict[str, int]:
    """Weights of every Linear and Conv layer by block (``helpers.train.model.parameter_block``); embeddings are lookups, norms negligible."""
    totals: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            block = parameter_block(f"{name}.weight")
            totals[block] = totals.get(block, 0) + module.weight.numel()
    return totals


def architecture(model: nn.Module) -> Architecture:
    """Read the FLOP-relevant shapes of a Qwen-VL model (real or ``meta``)."""
    config = model.config
    vision, text = config.vision_config, config.get_text_config()
    weights = _matrix_weights(model)
    qkv = next(m for n, m in model.named_modules() if n.endswith("visual.blocks.0.attn.qkv"))
    patch = vision.patch_size
    full_blocks = getattr(vision, "fullatt_block_indexes", None)
    # Qwen2.5-VL attends within windows of window_size px in most blocks, over the whole image in fullatt_block_indexes.
    window = (vision.window_size // patch) ** 2 if full_blocks is not None else 0
    windows = tuple(0 if full_blocks is None or block in full_blocks else window for block in range(vision.depth))
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Architecture(
        patch_params=weights.get("vision", 0), merged_params=weights.get("merger", 0), merge_size=vision.spatial_merge_size,
        vision_width=qkv.out_features // 3, vision_windows=windows, lm_params=weights.get("language model", 0),
        head_params=weights.get("lm_head", 0), lm_layers=text.num_hidden_layers, lm_width=text.num_attention_heads * head_dim,
    )


def lora_parameters(model: nn.Module, target_modules: str | list[str], rank: int) -> int:
    """Adapter weights LoRA adds: rank x (in + out) per targeted Linear, matched as PEFT matches (regex full match, or name suffixes)."""
    def targeted(name: str) -> bool:
        if isinstance(target_modules, str):
            return re.fullmatch(target_modules, name) is not None
        return any(name == t or name.endswith(f".{t}") for t in target_modules)

    return sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear) and targeted(n))


def sample_tokens(processor, example: dict, family: str, min_pixels: int, max_pixels: int, answer_span) -> SampleTokens:
    """Count one example's tokens without processing its image: the chat tokenised with one image placeholder, the placeholder expanded by the resize arithmetic.

    ``answer_span(ids) -> (start, end)`` is the assistant-only collator's own rule for where the answer lies.
    """
    record = get_family(family)
    text = processor.apply_chat_template(
        format_detection_messages(example["prompt"], example["answer"], example["system_prompt"]), tokenize=False, **record.chat_template_kwargs
    )
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_image = visual_token_count(get_family(family), example["width"], example["height"], min_pixels, max_pixels)
    vision_ids = vision_token_ids(processor.tokenizer)
    start, end = answer_span(ids)
    vision = sum(token in vision_ids for token in ids) - 1 + n_image  # the one <|image_pad|> becomes n_image of them
    answer = end - start
    return SampleTokens(vision=vision, prompt=len(ids) - 1 + n_image - vision - answer, answer=answer, patches=n_image * record.merge_size**2)


def padded_spans(batches: list[list[SampleTokens]]) -> list[list[Span]]:
    """Padded batches: every sample occupies the longest row of its batch and attends over all of it (sdpa computes the whole padded row)."""
    return [[Span(max(s.length for s in batch), max(s.length for s in batch)) for s in batch] for batch in batches]


def packed_spans(batches: list[list[SampleTokens]], varlen_attention: bool) -> list[list[Span]]:
    """Packed batches: no padding; flash-attention's variable-length kernel scores each sample against itself, a dense mask the whole row."""
    return [[Span(s.length, s.length if varlen_attention else sum(x.length for x in batch)) for s in batch] for batch in batches]


def length_grouped(samples: list[SampleTokens], batch_size: int) -> list[list[int]]:
    """Indexes of the samples in batches of similar length (longest first): what ``group_by_length`` aims at, deterministically."""
    order = sorted(range(len(samples)), key=lambda i: -samples[i].length)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def token_shares(batches: list[list[SampleTokens]], spans: list[list[Span]]) -> dict[str, float]:
    """Share of all positions of the batches held by vision, prompt, answer and padding tokens (they sum to 1)."""
    counts = dict.fromkeys(TOKEN_KINDS, 0)
    for batch, batch_spans in zip(batches, spans):
        for sample, span in zip(batch, batch_spans):
            counts["vision"] += sample.vision
            counts["prompt"] += sample.prompt
            counts["answer"] += sample.answer
            counts["padding"] += span.positions - sample.length
    total = sum(counts.values())
    return {kind: count / total for kind, count in counts.items()}


def vision_flops(arch: Architecture, patches: int) -> int:
    """Forward FLOPs of the vision tower on one image of ``patches`` patches (it is frozen: no backward).

    2 FLOPs (a multiply and an add) per matrix weight per patch, per merged token for the merger, plus
    4 x width x context per patch per block for the attention scores and their weighted sum
    (context: the whole image, or Qwen2.5-VL's window).
    """
    merged = patches // arch.merge_size**2
    attention = sum(4 * arch.vision_width * patches * (min(window, patches) if window else patches) for window in arch.vision_windows)
    return 2 * arch.patch_params * patches + 2 * arch.merged_params * merged + attention


def language_flops(arch: Architecture, span: Span, lora_params: int, checkpointing: bool) -> int:
    """Training FLOPs of the language model for one sample's span: forward and backward, and the recomputation of checkpointing.

    Per position, with c = 1 under activation checkpointing (each decoder layer runs its forward again), else 0:
      frozen decoder weights:  2 x lm_params x (2 + c)      forward, gradient of the input, recomputation
      LoRA adapters:           2 x lora_params x (3 + c)    forward, gradients of input and weights, recomputation
      lm_head (frozen):        2 x head_params x 2          forward, gradient of the input (outside the checkpointed layers)
      attention scores:        4 x lm_layers x lm_width x context x (3 + c)   QK^T and AV forward; backward twice that
    The attention term counts the whole score matrix, as sdpa does with a mask; flash-attention's causal kernel skips
    about half of it. Norms, activations and the optimizer step are left out (a few percent at these widths).
    """
    c = 1 if checkpointing else 0
    per_position = 2 * arch.lm_params * (2 + c) + 2 * lora_params * (3 + c) + 2 * arch.head_params * 2
    attention = 4 * arch.lm_layers * arch.lm_width * span.context * (3 + c)
    return span.positions * (per_position + attention)


def training_flops(arch: Architecture, batches: list[list[SampleTokens]], spans: list[list[Span]], lora_params: int, checkpointing: bool) -> dict[str, float]:
    """FLOPs per sample of a recipe over its batches, vision tower and language model apart (see ``vision_flops``, ``language_flops``)."""
    n = sum(len(batch) for batch in batches)
    vision = sum(vision_flops(arch, s.patches) for batch in batches for s in batch)
    language = sum(language_flops(arch, span, lora_params, checkpointing) for batch_spans in spans for span in batch_spans)
    return {"vision": vision / n, "language": language / n, "total": (vision + language) / n}


def model_flops(arch: Architecture, batches: list[list[SampleTokens]], lora_params: int) -> float:
    """Model FLOPs per sample for MFU (PaLM's definition): the recipe's forward and backward on its real tokens, no padding, no recomputation."""
    spans = [[Span(s.length, s.length) for s in batch] for batch in batches]
    return training_flops(arch, batches, spans, lora_params, checkpointing=False)["total"]


def peak_tflops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak in TFLOP/s from ``PEAK_BF16_TFLOPS``, or None when the name is not listed (no MFU then)."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in device_name), None)


def batch_positions(batch: dict) -> tuple[int, int]:
    """``(positions, real tokens)`` of a collated batch: all of input_ids, and those the attention mask keeps (all, when packed)."""
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return batch["input_ids"].numel(), real


def trained_tokens(batch: dict) -> int:
    """Positions whose label carries loss."""
    return int((batch["labels"] != IGNORE_INDEX).sum())
