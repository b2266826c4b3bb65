"""Debug tools: per-token label status, the verbose wrapper and the token distribution."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from helpers.train.collator_debug import (
    STATUSES,
    VerboseCollator,
    analyze_token_distribution,
    describe_batch,
    sample_segments,
    token_statuses,
)
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import vision_token_ids
from tests.support.notebook_cells import run_tagged_cells
from helpers.families.processors import load_processor
from helpers.families.registry import get_family
from tests.cases import chat_examples

CELLS = run_tagged_cells("collators")


@pytest.fixture(scope="module")
def setup(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_5_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_5_vl"]).eval()
    collators = {
        "masking": CELLS["VisionAndPaddingMaskingCollator"](processor),
        "assistant": CELLS["AssistantOnlyCollator"](processor),
        "packed": CELLS["PaddingFreeCollator"](processor, model.model.get_rope_index),
    }
    return processor, collators, chat_examples(get_family("qwen2_5_vl"), n=6)


def test_statuses_follow_mask_labels_and_vision_tokens(setup):
    processor, collators, examples = setup
    batch = collators["assistant"](examples)
    status = token_statuses(batch, vision_token_ids(processor.tokenizer))
    assert torch.equal(status == STATUSES.index("padding"), batch["attention_mask"] == 0)
    assert torch.equal(status == STATUSES.index("trained"), (batch["labels"] != -100) & (batch["attention_mask"] == 1))
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (status[batch["input_ids"] == image_pad] == STATUSES.index("masked-vision")).all()


def test_packed_rows_split_into_their_samples(setup):
    _, collators, examples = setup
    packed = collators["packed"](examples)
    padded = collators["assistant"](examples)
    segments = sample_segments(packed)
    assert [end - start for _, start, end in segments] == padded["attention_mask"].sum(dim=1).tolist()
    assert sample_segments(padded) == [(row, 0, padded["input_ids"].shape[1]) for row in range(len(examples))]


def test_describe_batch_is_compact_and_complete(setup):
    processor, collators, examples = setup
    text = describe_batch(collators["assistant"](examples[:2]), processor.tokenizer, vision_token_ids(processor.tokenizer), max_samples=2)
    assert text.count("sample ") == 2
    assert "<|image_pad|>×" in text  # repeats folded
    for status in ("trained", "masked-vision", "masked-prompt"):
        assert status in text
    assert "ERROR" not in text


def test_verbose_collator_prints_and_returns_the_same_batch(setup):
    processor, collators, examples = setup
    printed = []
    batch = VerboseCollator(collators["packed"], processor, max_samples=3, print_fn=printed.append)(examples[:3])
    reference = collators["packed"](examples[:3])
    assert all(torch.equal(batch[key], reference[key]) for key in reference)
    assert printed and printed[0].count("sample ") == 3 and " padding" in printed[0]


@pytest.mark.parametrize("name", ["masking", "assistant", "packed"])
def test_token_distribution_adds_up(setup, name):
    processor, collators, examples = setup
    printed = []
    stats = analyze_token_distribution(collators[name], examples, processor, n=6, batch_size=4, print_fn=printed.append)
    batches = [collators[name](examples[:4]), collators[name](examples[4:])]
    assert stats["total"] == sum(b["input_ids"].numel() for b in batches)
    assert stats["trained"] == sum(int((b["labels"] != -100).sum()) for b in batches)
    assert stats["vision"] + stats["prompt"] + stats["trained"] + stats["padding"] == stats["total"]
    assert stats["padding_waste"] == pytest.approx(stats["padding"] / (stats["total"] - stats["padding"]))
    assert stats["mislabelled"] == 0
    if name == "packed":
        assert stats["padding"] == 0
    else:
        assert stats["padding"] == sum(int((b["attention_mask"] == 0).sum()) for b in batches) > 0
    assert "padding waste" in printed[0]


def test_a_collator_that_trains_on_vision_tokens_is_flagged(setup):
    processor, collators, examples = setup

    def everything(batch_examples):
        batch = collators["assistant"](batch_examples)
        batch["labels"] = batch["input_ids"].clone()
        return batch

    printed = []
    stats = analyze_token_distribution(everything, examples, processor, n=2, batch_size=2, print_fn=printed.append)
    assert stats["mislabelled"] > 0 and "ERROR" in printed[0]
