"""Each family's published chat template, on the real Qwen2 vocabulary: our chats and collator labels hold there too.

The offline models use a tiny vocabulary; here the same collators run on the real byte-level BPE
(tests/fixtures), where for instance "\\n\\n" is one token and "<think>" an added one. Qwen3.5's own
vocabulary is not available: its template runs on the Qwen2 vocabulary, which splits the same way on
this text (the same pre-tokenizer on ASCII, the same added tokens).
"""

from __future__ import annotations

import pytest
import torch

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import add_chat_columns, detection_prompt, format_detection_messages, generation_prompt
from tests.support.notebook_cells import run_tagged_cells
from tests.support.real_vocab import real_processor, real_qwen2_tokenizer
from helpers.data.synthetic import make_synthetic_dataset
from tests.cases import FAMILIES

CELLS = run_tagged_cells("collators")
IGNORE = CELLS["IGNORE_INDEX"]


def test_the_real_vocabulary_has_the_published_ids():
    tokenizer = real_qwen2_tokenizer()
    assert tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|image_pad|>", "<think>"]) == [151645, 151655, 151667]
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]  # one token per digit


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_the_answer_on_the_real_vocabulary(family):
    processor = real_processor(family, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    options = family.chat_template_kwargs
    dataset = make_synthetic_dataset(4, seed=11, max_objects=4, min_side_px=60, max_side_px=200)
    prompt = detection_prompt(family, ["red circle", "green square"])
    examples = list(add_chat_columns(dataset, family, prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS))
    tokenizer = processor.tokenizer
    for name in ("AssistantOnlyCollator", "VisionAndPaddingMaskingCollator"):
        batch = CELLS[name](processor, options)(examples)
        for row, example in enumerate(examples):
            real = batch["attention_mask"][row].bool()
            ids, labels = batch["input_ids"][row][real], batch["labels"][row][real]
            decoded = tokenizer.decode(ids[labels != IGNORE], skip_special_tokens=False)
            chat = processor.apply_chat_template(format_detection_messages(example["prompt"], example["answer"]), tokenize=False, **options)
            if name == "AssistantOnlyCollator":
                assert decoded == example["answer"] + "<|im_end|>"
                # The prompt at inference ends with the generation prompt, so the tokens before the answer are exactly its tokens.
                prompt_ids = tokenizer.encode(generation_prompt(processor, options), add_special_tokens=False)
                start = int((labels != IGNORE).nonzero()[0])
                assert ids[start - len(prompt_ids) : start].tolist() == prompt_ids
            else:
                assert decoded == chat.replace("<|vision_start|><|image_pad|><|vision_end|>", "")
        assert not torch.isin(batch["labels"], torch.tensor(tokenizer.convert_tokens_to_ids(["<|image_pad|>"]))).any()
