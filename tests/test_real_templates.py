"""Each family's published chat template, on the real Qwen2 vocabulary: our chats and collator labels hold there too.

The offline models use a tiny vocabulary; here the same collators run on the real byte-level BPE
(tests/fixtures), where for instance "\\n\\n" is one token and "<think>" an added one. Qwen3.5's own
vocabulary is not available: its template runs on the Qwen2 vocabulary, which splits the same way on
this text (the same pre-tokenizer on ASCII, the same added tokens).
"""

from __future__ import annotations

import json
import lzma
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoVideoProcessor
from transformers.models.qwen2 import Qwen2Tokenizer

from helpers.families import get_family
from helpers.formatting import add_chat_columns, detection_prompt, format_detection_messages, generation_prompt
from helpers.notebook_cells import run_tagged_cells
from helpers.offline import HUB_CONFIGS_DIR, hub_chat_template
from helpers.processing import stock_processor_class
from helpers.synthetic import make_synthetic_dataset
from tests.cases import FAMILIES

FIXTURES = Path(__file__).parent / "fixtures" / "qwen2_tokenizer"
CELLS = run_tagged_cells("collators")
IGNORE = CELLS["IGNORE_INDEX"]


@cache
def real_qwen2_tokenizer() -> Qwen2Tokenizer:
    """The real Qwen2 BPE with its added tokens at their real ids (151643 onwards)."""
    vocab = json.loads(lzma.open(FIXTURES / "vocab.json.xz").read())
    lines = lzma.open(FIXTURES / "merges.txt.xz").read().decode().splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    config = json.loads((FIXTURES / "tokenizer_config.json").read_text())
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, errors="replace")
    for token_id, token in sorted(config["added_tokens_decoder"].items(), key=lambda item: int(item[0])):
        tokenizer.add_tokens([token["content"]], special_tokens=token["special"])
        assert tokenizer.convert_tokens_to_ids(token["content"]) == int(token_id), token
    tokenizer.add_special_tokens({"eos_token": config["eos_token"], "pad_token": config["pad_token"]})
    return tokenizer


def real_processor(family: str):
    """The family's stock processor from its published files, with the real Qwen2 vocabulary."""
    folder = HUB_CONFIGS_DIR / family
    image_processor = AutoImageProcessor.from_pretrained(folder)
    image_processor.size = {"shortest_edge": 3136, "longest_edge": 50176}
    return stock_processor_class(family)(
        image_processor=image_processor, tokenizer=real_qwen2_tokenizer(), video_processor=AutoVideoProcessor.from_pretrained(folder),
        chat_template=hub_chat_template(family),
    )


def test_the_real_vocabulary_has_the_published_ids():
    tokenizer = real_qwen2_tokenizer()
    assert tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|image_pad|>", "<think>"]) == [151645, 151655, 151667]
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]  # one token per digit


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_the_answer_on_the_real_vocabulary(family):
    processor = real_processor(family)
    options = get_family(family).chat_template_kwargs
    dataset = make_synthetic_dataset(4, seed=11, max_objects=4, min_side_px=60, max_side_px=200)
    examples = list(add_chat_columns(dataset, family, detection_prompt(family, ["red circle", "green square"]), 3136, 50176))
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
