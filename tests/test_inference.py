"""Batched greedy generation equals one-by-one, and evaluation restores the model's state."""

from __future__ import annotations

import pytest
from transformers import AutoModelForImageTextToText

from helpers.formatting import detection_prompt
from helpers.inference import Generation, evaluate_model, generate, generate_answers, span_score, token_char_ends
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
    batched = generate(model, processor, images, prompts, max_new_tokens=12, batch_size=4)
    single = generate(model, processor, images, prompts, max_new_tokens=12, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    for b, s in zip(batched, single):
        assert b.token_probs == pytest.approx(s.token_probs, abs=1e-4) and b.token_ends == s.token_ends
    assert all(isinstance(g.text, str) and "<|im_end|>" not in g.text for g in batched)
    assert generate_answers(model, processor, images, prompts, max_new_tokens=12, batch_size=2) == [g.text for g in single]


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_token_probabilities_are_those_of_the_chosen_tokens(tiny_checkpoints, family):
    # Recompute each generated token's probability with a plain forward pass over prompt + answer.
    import torch

    from helpers.formatting import format_detection_messages

    processor = load_processor(tiny_checkpoints[family], MIN_PIXELS, MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family]).eval()
    image = make_synthetic_dataset(1, seed=4)[0]["image"]
    prompt = detection_prompt(family, ["red circle"])
    (generation,) = generate(model, processor, [image], [prompt], max_new_tokens=10, batch_size=1)
    answer_ids = generation.token_ids
    assert len(answer_ids) == len(generation.token_probs) == 10 and generation.token_ends[-1] == len(generation.text)
    text = processor.apply_chat_template(format_detection_messages(prompt), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(answer_ids), dtype=torch.long)], dim=1)
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, n_prompt - 1 : -1].float(), dim=-1)
    expected = probs[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].tolist()
    assert generation.token_probs == pytest.approx(expected, abs=1e-4)


def test_token_char_ends_cover_the_text(tiny_checkpoints):
    tokenizer = load_processor(tiny_checkpoints["qwen2_vl"], MIN_PIXELS, MAX_PIXELS).tokenizer
    for text in ['[{"bbox_2d": [1, 2, 3, 4], "label": "red circle"}]', "<|box_start|>(1,2),(3,4)<|box_end|>", "é ü"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        ends = token_char_ends(tokenizer, ids)
        assert ends[-1] == len(text) and ends == sorted(ends)


@pytest.mark.parametrize(
    "span,expected",
    [((0, 2), 0.9), ((2, 4), 0.5), ((1, 3), (0.9 + 0.5) / 2), ((6, 9), 0.0)],
)
def test_span_score_averages_the_overlapping_tokens(span, expected):
    generation = Generation("abcdef", [1, 2, 3], [0.9, 0.5, 0.1], [2, 4, 6])  # tokens "ab", "cd", "ef"
    assert span_score(generation, span) == pytest.approx(expected)


def test_generation_probabilities_are_probabilities_and_deterministic(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], MIN_PIXELS, MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_vl"])
    images = list(make_synthetic_dataset(3, seed=9)["image"])
    prompts = ["Detect."] * len(images)
    runs = [generate(model, processor, images, prompts, max_new_tokens=20, batch_size=2) for _ in range(2)]
    assert runs[0] == runs[1]
    probs = [p for g in runs[0] for p in g.token_probs]
    assert probs and all(0.0 < p <= 1.0 for p in probs)  # every box score is a mean of these, so it lies in [0, 1]


def test_each_box_scores_its_own_tokens():
    from helpers.inference import scored_predictions

    first = '{"bbox_2d": [10, 20, 30, 40], "label": "a"}'
    text = f'[{first}, {{"bbox_2d": [50, 60, 70, 80], "label": "b"}}]'
    # One token per character: 0.9 up to the end of the first object, 0.2 after it.
    probs = [0.9 if i < 1 + len(first) else 0.2 for i in range(len(text))]
    generation = Generation(text, list(range(len(text))), probs, list(range(1, len(text) + 1)))
    predictions = scored_predictions(generation, "qwen3_vl", (1000, 1000), (1008, 1008))
    assert [p["label"] for p in predictions] == ["a", "b"]
    assert [p["score"] for p in predictions] == pytest.approx([0.9, 0.2])
    assert predictions[0]["bbox_xyxy_px"] == [10, 20, 30, 40]
