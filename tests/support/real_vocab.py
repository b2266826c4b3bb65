"""The real Qwen2 vocabulary (vendored in ``tests/fixtures/qwen2_tokenizer``) and a family's processor built on it.

No machine here reaches the model hub. With these, chats are tokenised exactly as the published
Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints tokenise them: the tests check the collators' labels on
real tokens, and the speed benchmarks count real-size prompts and answers. Qwen3.5 has its own
vocabulary, of which no copy is vendored (``tests/fixtures/README.md``).
"""

from __future__ import annotations

import json
import lzma
from functools import cache
from pathlib import Path

from transformers import AutoImageProcessor, AutoVideoProcessor, ProcessorMixin
from transformers.models.qwen2 import Qwen2Tokenizer

from helpers.families.registry import HUB_CONFIGS_DIR, Family
from helpers.offline import hub_chat_template
from helpers.families.processors import stock_processor_class

REAL_VOCAB_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "qwen2_tokenizer"


@cache
def real_qwen2_tokenizer() -> Qwen2Tokenizer:
    """The real Qwen2 BPE with its added tokens at their real ids (151643 onwards)."""
    vocab = json.loads(lzma.open(REAL_VOCAB_DIR / "vocab.json.xz").read())
    lines = lzma.open(REAL_VOCAB_DIR / "merges.txt.xz").read().decode().splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    config = json.loads((REAL_VOCAB_DIR / "tokenizer_config.json").read_text())
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, errors="replace")
    for token_id, token in sorted(config["added_tokens_decoder"].items(), key=lambda item: int(item[0])):
        tokenizer.add_tokens([token["content"]], special_tokens=token["special"])
        if tokenizer.convert_tokens_to_ids(token["content"]) != int(token_id):
            raise RuntimeError(f"{token['content']!r} got id {tokenizer.convert_tokens_to_ids(token['content'])}, published {token_id}")
    tokenizer.add_special_tokens({"eos_token": config["eos_token"], "pad_token": config["pad_token"]})
    return tokenizer


def real_processor(family: Family, min_pixels: int, max_pixels: int) -> ProcessorMixin:
    """The family's stock processor from its published files, on the real Qwen2 vocabulary, with these resolution bounds."""
    folder = HUB_CONFIGS_DIR / family.model_type
    image_processor = AutoImageProcessor.from_pretrained(folder)
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return stock_processor_class(family)(
        image_processor=image_processor, tokenizer=real_qwen2_tokenizer(), video_processor=AutoVideoProcessor.from_pretrained(folder),
        chat_template=hub_chat_template(family),
    )
