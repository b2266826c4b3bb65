"""Processor choice and resolution settings."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers.boxes import resized_size, visual_token_count
from tests.cases import IMAGE_SIZES, PIXEL_BOUNDS
from helpers.processing import (
    IMAGE_ONLY_PROCESSORS,
    STOCK_PROCESSORS,
    SUPPORTED_FAMILIES,
    load_processor,
    processor_class_for,
    read_family,
)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("torchvision_available", [True, False])
def test_processor_class_choice(family, torchvision_available):
    expected = STOCK_PROCESSORS[family] if torchvision_available else IMAGE_ONLY_PROCESSORS[family]
    assert processor_class_for(family, torchvision_available) is expected


def test_processor_class_for_unknown_family():
    with pytest.raises(ValueError, match="unknown family 'llava'"):
        processor_class_for("llava", False)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("min_pixels,max_pixels", PIXEL_BOUNDS)
def test_resized_size_is_what_the_processor_feeds_the_model(tiny_checkpoints, family, min_pixels, max_pixels):
    # The same sizes as the boxes round-trip table: tiny, huge, extreme aspect ratios, random.
    processor = load_processor(tiny_checkpoints[family], min_pixels, max_pixels)
    patch = processor.image_processor.patch_size
    for width, height in IMAGE_SIZES:
        grid = processor.image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
        assert (int(grid[2]) * patch, int(grid[1]) * patch) == resized_size(family, width, height, min_pixels, max_pixels), (width, height)
        # (No area check: at extreme aspect ratios smart_resize keeps each side >= one factor, which
        # can exceed max_pixels; what matters is that our size equals the processor's.)


def test_bad_pixel_bounds_are_rejected(tiny_checkpoints):
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        load_processor(tiny_checkpoints["qwen2_vl"], 5000, 4000)


def test_read_family_rejects_other_models(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'llama' is not a supported Qwen-VL family"):
        read_family(tmp_path)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("width,height", [(90, 60), (640, 480), (33, 1200)])
def test_visual_token_count_is_the_number_of_image_tokens(tiny_checkpoints, family, width, height):
    processor = load_processor(tiny_checkpoints[family], 3136, 50176)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
    ids = processor(text=[text], images=[[Image.new("RGB", (width, height))]], return_tensors="pt")["input_ids"][0]
    n_image_tokens = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert visual_token_count(family, width, height, 3136, 50176) == n_image_tokens
