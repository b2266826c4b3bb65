"""Batched greedy generation and evaluation of detection answers."""

from __future__ import annotations

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from helpers.boxes import parse_model_answer, resized_size
from helpers.formatting import format_detection_messages
from helpers.metrics import summarize_detections


def stop_token_ids(model, processor) -> set[int]:
    """Token ids that end an answer: the generation config's EOS ids plus the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(processor.tokenizer.eos_token_id)
    return ids


def generate_answers(model, processor, images: list, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers for image+prompt pairs, batched with left padding (equal to one-by-one)."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    tokenizer = processor.tokenizer
    stops = stop_token_ids(model, processor)
    was_training = model.training
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # right padding puts pads between prompt and answer
    model.eval()
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="generate", leave=False):
            batch_images = images[start : start + batch_size]
            texts = [
                processor.apply_chat_template(format_detection_messages(p), tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            inputs = processor(text=texts, images=[[img] for img in batch_images], return_tensors="pt", padding=True)
            inputs = inputs.to(model.device)
            with torch.inference_mode():
                output = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            for row in output[:, inputs["input_ids"].shape[1] :].tolist():
                cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
                # Keep special tokens: Qwen2-VL's boxes are written with <|box_start|> and friends.
                answers.append(tokenizer.decode(row[:cut], skip_special_tokens=False))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers


def evaluate_model(
    model,
    processor,
    dataset: Dataset,
    family: str,
    prompt: str,
    min_pixels: int,
    max_pixels: int,
    max_new_tokens: int,
    batch_size: int,
) -> tuple[list[dict], dict]:
    """Generate on every image of ``dataset``, parse the boxes, and summarise the detections."""
    images = [img.convert("RGB") for img in dataset["image"]]
    raw_texts = generate_answers(model, processor, images, [prompt] * len(images), max_new_tokens, batch_size)
    records = []
    for example, raw_text in zip(dataset.select_columns(["image_id", "width", "height", "objects"]), raw_texts):
        image_size = (example["width"], example["height"])
        model_size = resized_size(family, example["width"], example["height"], min_pixels, max_pixels)
        records.append(
            {
                "image_id": example["image_id"],
                "ground_truth": example["objects"],
                "raw_text": raw_text,
                "predictions": parse_model_answer(raw_text, family, image_size, model_size),
            }
        )
    return records, summarize_detections(records)
