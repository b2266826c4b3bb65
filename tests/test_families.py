"""Each family's record agrees with its published files, and an unknown family is one clear error everywhere."""

from __future__ import annotations

import json

import pytest
import transformers

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import FAMILIES, FAMILY_NAMES, NORM1000, RESIZED_PX, get_family
from helpers.families.registry import HUB_CONFIGS_DIR
from helpers.offline import hub_chat_template
from tests.cases import FAMILIES as TESTED_FAMILIES

UNKNOWN = "unknown family 'llava': supported model_type values are " + ", ".join(FAMILY_NAMES)


def test_every_family_is_tested():
    assert tuple(family.model_type for family in TESTED_FAMILIES) == FAMILY_NAMES == tuple(FAMILIES)
    assert TESTED_FAMILIES == list(FAMILIES.values())


@pytest.mark.parametrize("family", TESTED_FAMILIES)
def test_record_matches_the_published_processor_config(family):
    record = family
    published = json.loads((HUB_CONFIGS_DIR / family.model_type / "preprocessor_config.json").read_text())
    assert (published["patch_size"], published["merge_size"]) == (record.patch_size, record.merge_size)
    assert published["processor_class"] == record.processor_class
    assert record.coordinates in (NORM1000, RESIZED_PX) and record.resize_factor == record.patch_size * record.merge_size
    for name in (record.processor_class, record.video_processor_class, record.tiny.config_class):
        assert hasattr(transformers, name), name


@pytest.mark.parametrize("family", TESTED_FAMILIES)
def test_default_system_prompt_is_what_the_published_template_inserts(tiny_checkpoints, family):
    from helpers.families.processors import load_processor

    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert processor.chat_template == hub_chat_template(family)  # the tiny checkpoint carries the published template
    rendered = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=False)
    default = family.default_system_prompt
    if default is None:
        assert rendered.startswith("<|im_start|>user\n")
    else:
        assert rendered.startswith(f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\n")


def test_an_unknown_family_is_one_error_listing_the_known_ones():
    # A family name enters through get_family (and read_family, which reads config.model_type); every other
    # helper takes the record.
    with pytest.raises(ValueError) as raised:
        get_family("llava")
    assert str(raised.value) == UNKNOWN


def test_offline_model_id_names_the_families(tmp_path):
    from helpers.offline import resolve_model_path

    with pytest.raises(ValueError, match="expected offline:<model_type> with model_type one of " + ", ".join(FAMILY_NAMES)):
        resolve_model_path("offline:llava", tmp_path)
