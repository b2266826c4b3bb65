"""Detection records as chat messages in the Qwen-VL conversation layout."""

from __future__ import annotations

from datasets import Dataset

from helpers.boxes import resized_size, to_model_answer

SYSTEM_PROMPT = "You are a helpful assistant."
IGNORE_INDEX = -100  # label value that cross-entropy skips
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")  # placeholders and delimiters

# The answer syntax each family was pre-trained to produce (see helpers/boxes.py for the units).
ANSWER_SYNTAX = {
    "qwen2_vl": "one <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|> per object",
    "qwen2_5_vl": 'a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": "..."}',
    "qwen3_vl": 'a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": "..."}',
}


def vision_token_ids(tokenizer) -> set[int]:
    """Ids of the image/video placeholder and delimiter tokens, read from the tokenizer."""
    ids = {tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    if None in ids or tokenizer.unk_token_id in ids:
        raise ValueError(f"tokenizer lacks one of the vision tokens {VISION_TOKENS}")
    return ids


def detection_prompt(family: str, class_names: list[str]) -> str:
    """The user instruction: which classes to find and the answer syntax for the family."""
    if family not in ANSWER_SYNTAX:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(ANSWER_SYNTAX)}")
    return f"Detect every {', '.join(class_names)} in the image. Answer with {ANSWER_SYNTAX[family]}."


def format_detection_messages(prompt: str, answer: str | None = None) -> list[dict]:
    """System, user (image + prompt) and, when ``answer`` is given, the assistant turn."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def add_chat_columns(dataset: Dataset, family: str, prompt: str, min_pixels: int, max_pixels: int) -> Dataset:
    """Add the ``prompt`` and target ``answer`` columns; images are not decoded."""
    answers = []
    for objects, width, height in zip(dataset["objects"], dataset["width"], dataset["height"]):
        model_size = resized_size(family, width, height, min_pixels, max_pixels)
        answers.append(to_model_answer(objects, family, (width, height), model_size))
    return dataset.add_column("prompt", [prompt] * len(dataset)).add_column("answer", answers)
