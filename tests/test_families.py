"""Each family's record agrees with its published files, and an unknown family is one clear error everywhere."""

from __future__ import annotations

import json

import pytest
import transformers

from helpers.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families import FAMILIES, FAMILY_NAMES, NORM1000, RESIZED_PX, get_family
from helpers.offline import HUB_CONFIGS_DIR, hub_chat_template
from tests.cases import FAMILIES as TESTED_FAMILIES

UNKNOWN = "unknown family 'llava': supported model_type values are " + ", ".join(FAMILY_NAMES)


def test_every_family_is_tested():
    assert TESTED_FAMILIES == FAMILY_NAMES == tuple(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_record_matches_the_published_processor_config(family):
    record = get_family(family)
    published = json.loads((HUB_CONFIGS_DIR / family / "preprocessor_config.json").read_text())
    assert (published["patch_size"], published["merge_size"]) == (record.patch_size, record.merge_size)
    assert published["processor_class"] == record.processor_class
    assert record.coordinates in (NORM1000, RESIZED_PX) and record.resize_factor == record.patch_size * record.merge_size
    for name in (record.processor_class, record.video_processor_class, record.tiny.config_class):
        assert hasattr(transformers, name), name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_default_system_prompt_is_what_the_published_template_inserts(tiny_checkpoints, family):
    from helpers.processing import load_processor

    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert processor.chat_template == hub_chat_template(family)  # the tiny checkpoint carries the published template
    rendered = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=False)
    default = get_family(family).default_system_prompt
    if default is None:
        assert rendered.startswith("<|im_start|>user\n")
    else:
        assert rendered.startswith(f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\n")


def unknown_family_calls():
    """Every entry point that takes a family, called with one nobody supports."""
    from helpers.boxes import parse_model_answer, resized_size, to_model_answer
    from helpers.formatting import answer_syntax
    from helpers.modeling import lora_config
    from helpers.offline import build_tiny_checkpoint, tiny_sizes
    from helpers.processing import stock_processor_class

    return {
        "resized_size": lambda tmp: resized_size("llava", 10, 10, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS),
        "to_model_answer": lambda tmp: to_model_answer([], "llava", (10, 10), (28, 28)),
        "parse_model_answer": lambda tmp: parse_model_answer("", "llava", (10, 10), (28, 28)),
        "answer_syntax": lambda tmp: answer_syntax("llava"),
        "lora_config": lambda tmp: lora_config("llava", ["language"], 4, 8, 0.0),
        "tiny_sizes": lambda tmp: tiny_sizes("llava"),
        "build_tiny_checkpoint": lambda tmp: build_tiny_checkpoint("llava", tmp / "x"),
        "stock_processor_class": lambda tmp: stock_processor_class("llava"),
    }


@pytest.mark.parametrize("entry_point", list(unknown_family_calls()))
def test_an_unknown_family_is_one_error_listing_the_known_ones(entry_point, tmp_path):
    with pytest.raises(ValueError) as raised:
        unknown_family_calls()[entry_point](tmp_path)
    assert str(raised.value) == UNKNOWN


def test_offline_model_id_names_the_families(tmp_path):
    from helpers.run import resolve_model_path

    with pytest.raises(ValueError, match="expected offline:<family> with family one of " + ", ".join(FAMILY_NAMES)):
        resolve_model_path("offline:llava", tmp_path)
