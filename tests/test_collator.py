"""The notebook's inline assistant-only collator, run from the notebook source itself."""

from __future__ import annotations

import pytest

from helpers.formatting import add_chat_columns, detection_prompt
from helpers.processing import SUPPORTED_FAMILIES, load_processor
from helpers.synthetic import make_synthetic_dataset
from tests.notebook_cells import run_tagged_cells

CELLS = run_tagged_cells("collators")
MIN_PIXELS, MAX_PIXELS = 3136, 50176


def chat_dataset(family, n=4, max_objects=4):
    ds = make_synthetic_dataset(n, seed=11, max_objects=max_objects)
    return add_chat_columns(ds, family, detection_prompt(family, ["red circle"]), MIN_PIXELS, MAX_PIXELS)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_only_answer_and_end_of_turn_carry_labels(tiny_checkpoints, family, padding_side):
    processor = load_processor(tiny_checkpoints[family], MIN_PIXELS, MAX_PIXELS)
    processor.tokenizer.padding_side = padding_side
    ds = chat_dataset(family)
    examples = [ds[i] for i in range(len(ds))]  # mixed image sizes and answer lengths
    batch = CELLS["AssistantOnlyCollator"](processor)(examples)
    ignore = CELLS["IGNORE_INDEX"]
    tokenizer = processor.tokenizer
    assert len({int(m.sum()) for m in batch["attention_mask"]}) > 1  # the batch really is padded
    for row, example in enumerate(examples):
        labelled = batch["labels"][row] != ignore
        assert (batch["labels"][row][labelled] == batch["input_ids"][row][labelled]).all()
        assert tokenizer.decode(batch["input_ids"][row][labelled], skip_special_tokens=False) == example["answer"] + "<|im_end|>"
        positions = labelled.nonzero().flatten()
        assert int(positions[-1] - positions[0] + 1) == len(positions)  # one contiguous span
        vision_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")}
        assert not any(int(t) in vision_ids for t in batch["input_ids"][row][labelled])
        assert not labelled[batch["attention_mask"][row] == 0].any()


def test_missing_assistant_turn_is_a_clear_error(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], MIN_PIXELS, MAX_PIXELS)
    collator = CELLS["AssistantOnlyCollator"](processor)
    example = chat_dataset("qwen2_vl", n=1)[0]
    # The answer text itself may not contain the marker; simulate a template without an assistant turn.
    collator.answer_prefix_ids = processor.tokenizer.encode("<|im_start|>nobody\n", add_special_tokens=False)
    with pytest.raises(ValueError, match="example 0: no assistant turn"):
        collator([example])


def test_find_subsequence_end():
    find = CELLS["find_subsequence_end"]
    assert find([1, 2, 3, 1, 2, 4], [1, 2]) == 5  # the last occurrence
    assert find([1, 2, 3], [2, 3]) == 3
    assert find([1, 2, 3], [4]) == -1


def test_truncated_answer_is_a_clear_error(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], MIN_PIXELS, MAX_PIXELS)
    collator = CELLS["AssistantOnlyCollator"](processor)
    collator.end_of_turn_id = processor.tokenizer.convert_tokens_to_ids("<|quad_end|>")  # never in the text
    with pytest.raises(ValueError, match="example 0: the answer has no end-of-turn token"):
        collator([chat_dataset("qwen2_vl", n=1)[0]])
