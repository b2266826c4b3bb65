"""The stock processors, their resolution settings, and folders saved anywhere loading anywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from helpers.families.boxes import resized_size, visual_token_count
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.processors import (
    load_processor,
    load_saved_processor,
    model_input_size,
    read_family,
    stock_processor_class,
)
from helpers.run_notebook import REPO_ROOT
from tests.cases import FAMILIES, IMAGE_SIZES, PIXEL_BOUNDS


@pytest.mark.parametrize("family", FAMILIES)
def test_the_stock_processor_is_what_loads(tiny_checkpoints, family):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert type(processor) is stock_processor_class(family)
    assert type(AutoProcessor.from_pretrained(tiny_checkpoints[family])) is stock_processor_class(family)  # as for a hub id
    assert processor.video_processor is not None and processor.video_processor.patch_size == processor.image_processor.patch_size


def processed(processor, family: str) -> dict:
    """A chat with one image, through the processor: what a model would get."""
    from helpers.families.chat import detection_prompt, format_detection_messages

    text = processor.apply_chat_template(format_detection_messages(detection_prompt(family, ["cat"]), "x"), tokenize=False)
    return processor(text=[text], images=[[Image.new("RGB", (300, 170), (90, 30, 200))]], return_tensors="pt")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_processor_reloads_through_the_stock_classes(tiny_checkpoints, tmp_path, family):
    # What a run saves in model/ (transformers 5 layout: one processor_config.json) loads in a
    # fresh process through the stock class and AutoProcessor, with the run's resolution bounds.
    processor = load_processor(tiny_checkpoints[family], 12544, 12544)
    processor.save_pretrained(tmp_path / "model")
    assert "video_processor" in json.loads((tmp_path / "model" / "processor_config.json").read_text())
    script = (
        "import sys, json; from transformers import AutoProcessor; from helpers.families.processors import load_saved_processor; "
        "from helpers.families.registry import get_family; "
        f"p = load_saved_processor(sys.argv[1], get_family({family.model_type!r})); a = AutoProcessor.from_pretrained(sys.argv[1]); "
        "print(json.dumps([type(p).__name__, type(a).__name__, dict(p.image_processor.size)]))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = json.loads(out.stdout.strip().splitlines()[-1])
    assert names[:2] == [stock_processor_class(family).__name__] * 2
    assert names[2]["shortest_edge"] == names[2]["longest_edge"] == 12544
    reloaded = load_saved_processor(tmp_path / "model", family)
    for key, value in processed(processor, family).items():
        assert torch.equal(value, processed(reloaded, family)[key]), key


def test_without_torchvision_loading_stops_with_the_fix(tiny_checkpoints):
    # torchvision made unimportable, as on a machine with torch alone.
    script = (
        "import sys; sys.modules['torchvision'] = None\n"
        "from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS\n"
        "from helpers.families.processors import load_processor\n"
        "load_processor(sys.argv[1], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, tiny_checkpoints["qwen2_vl"]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "ImportError: torchvision is not installed. Every Qwen-VL processor needs it" in out.stderr
    assert "pip install -r requirements.txt" in out.stderr and "download.pytorch.org/whl/cpu" in out.stderr


@pytest.mark.parametrize("family", FAMILIES)
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


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,height", [(640, 480), (196, 9), (10, 1990), (33, 1200)])
def test_model_input_size_is_the_processors_grid(tiny_checkpoints, family, width, height):
    processor = load_processor(tiny_checkpoints[family], 12544, 12544)
    grid = processor.image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
    assert model_input_size(processor, grid) == resized_size(family, width, height, 12544, 12544)


def test_bad_pixel_bounds_are_rejected(tiny_checkpoints):
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        load_processor(tiny_checkpoints["qwen2_vl"], 5000, 4000)


def test_read_family_rejects_other_models(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'llama' is not a supported Qwen-VL family"):
        read_family(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,height", [(90, 60), (640, 480), (33, 1200)])
def test_visual_token_count_is_the_number_of_image_tokens(tiny_checkpoints, family, width, height):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
    ids = processor(text=[text], images=[[Image.new("RGB", (width, height))]], return_tensors="pt")["input_ids"][0]
    n_image_tokens = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert visual_token_count(family, width, height, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) == n_image_tokens
