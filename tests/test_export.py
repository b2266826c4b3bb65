"""Merging a saved LoRA adapter into its base: reloads alone and generates what base + adapter did."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.train.export import merge_adapter_into_base, merge_refusal
from helpers.families.chat import detection_prompt
from helpers.evaluate.generation import generate
from helpers.train.model import load_model_and_processor
from helpers.train.lora import lora_config, wrap_lora
from helpers.families.processors import load_saved_processor
from helpers.evaluate.generation import GenerationSettings
from tests.cases import FAMILIES



@pytest.mark.parametrize("family", FAMILIES)
def test_merged_model_generates_like_base_plus_adapter(tiny_checkpoints, tmp_path, family):
    base, processor = load_model_and_processor(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = wrap_lora(base, lora_config(family, ["language", "merger"], 4, 8, 0.0))
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op (B = 0); make the adapter change the outputs
            parameter.data.normal_(0, 0.5)
    adapter_dir = tmp_path / "model"
    model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)

    merged_dir = merge_adapter_into_base(tiny_checkpoints[family], adapter_dir, tmp_path / "model_merged", torch.float32)
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    merged_processor = load_saved_processor(merged_dir, family)
    assert merged_processor.image_processor.size == {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}

    fresh = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family]), adapter_dir)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    image = Image.new("RGB", (120, 90), (200, 40, 40))
    prompt = detection_prompt(family, ["red circle"])
    answers = {name: generate(m, merged_processor, [image], [prompt], GenerationSettings(max_new_tokens=12, batch_size=1))[0].text
               for name, m in (("merged", merged), ("adapter", fresh), ("base", plain))}
    assert answers["merged"] == answers["adapter"]
    assert answers["merged"] != answers["base"]  # the adapter really changed something


@pytest.mark.parametrize(
    "quantization,use_lora,refused",
    [("none", True, None), ("4bit", True, "rounds it away"), ("8bit", True, "rounds it away"), ("none", False, "nothing to merge")],
)
def test_merge_refusals_say_why(quantization, use_lora, refused):
    reason = merge_refusal(quantization, use_lora)
    assert reason is None if refused is None else refused in reason
