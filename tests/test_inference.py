"""Batched greedy generation equals one-by-one, and evaluation restores the model's state."""

from __future__ import annotations

import pytest
from transformers import AutoModelForImageTextToText

from helpers.formatting import detection_prompt
from helpers.inference import evaluate_model, generate_answers
from helpers.processing import SUPPORTED_FAMILIES, load_processor
from helpers.synthetic import make_synthetic_dataset

MIN_PIXELS, MAX_PIXELS = 3136, 50176


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_batched_equals_one_by_one(tiny_checkpoints, family):
    processor = load_processor(tiny_checkpoints[family], MIN_PIXELS, MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    ds = make_synthetic_dataset(4, seed=2)  # four different image sizes: prompts of different lengths
    images = list(ds["image"])
    prompts = [detection_prompt(family, ["red circle"])] * len(images)
    batched = generate_answers(model, processor, images, prompts, max_new_tokens=12, batch_size=4)
    single = generate_answers(model, processor, images, prompts, max_new_tokens=12, batch_size=1)
    assert batched == single
    assert all(isinstance(a, str) and "<|im_end|>" not in a for a in batched)


def test_evaluate_model_restores_mode_and_padding(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_5_vl"], MIN_PIXELS, MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_5_vl"])
    model.train()
    processor.tokenizer.padding_side = "right"
    ds = make_synthetic_dataset(3, seed=9)
    records, metrics = evaluate_model(
        model, processor, ds, "qwen2_5_vl", "Detect.", MIN_PIXELS, MAX_PIXELS, max_new_tokens=8, batch_size=2
    )
    assert model.training and processor.tokenizer.padding_side == "right"
    assert [r["image_id"] for r in records] == ["0", "1", "2"]
    assert [r["ground_truth"] for r in records] == ds["objects"]
    assert metrics["n_images"] == 3 and metrics["n_ground_truth"] == sum(len(o) for o in ds["objects"])


def test_mismatched_inputs_are_rejected(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match="got 1 images but 2 prompts"):
        generate_answers(None, processor, [object()], ["a", "b"], max_new_tokens=1, batch_size=1)
