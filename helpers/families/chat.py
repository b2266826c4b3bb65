"""Detection records as chat messages in the Qwen-VL conversation layout."""

from __future__ import annotations

from datasets import Dataset
from jinja2.exceptions import TemplateError

from helpers.families.boxes import resized_size, to_model_answer
from helpers.families.registry import JSON, TAGS, Family

TASKS = ("detection", "grounding")  # every class in one answer, or one class named in the prompt
IGNORE_INDEX = -100  # label value that cross-entropy skips
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
NO_REASONING = (
    "Detection answers carry no reasoning: choose a checkpoint whose template can answer without thinking "
    "(an Instruct model, or a template honouring enable_thinking=False)"
)
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")  # placeholders and delimiters

# How the instruction names each answer syntax (helpers.families.registry: which family writes which, in which units).
ANSWER_SYNTAX = {
    TAGS: "one <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|> per object",
    JSON: 'a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": "..."}',
}


def vision_token_ids(tokenizer) -> set[int]:
    """Ids of the image/video placeholder and delimiter tokens, read from the tokenizer."""
    ids = {tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    if None in ids or tokenizer.unk_token_id in ids:
        raise ValueError(f"tokenizer lacks one of the vision tokens {VISION_TOKENS}")
    return ids


def answer_syntax(family: Family) -> str:
    """How the family's answers are written, for the instruction."""
    return ANSWER_SYNTAX[family.answer_syntax]


def detection_prompt(family: Family, class_names: list[str]) -> str:
    """The user instruction: which classes to find and the answer syntax for the family."""
    return f"Detect every {', '.join(class_names)} in the image. Answer with {answer_syntax(family)}."


def grounding_prompt(family: Family, label: str) -> str:
    """The user instruction of a grounding example: the one class to find and the answer syntax."""
    return f"Locate every {label} in the image. Answer with {answer_syntax(family)}."


def expand_for_grounding(dataset: Dataset) -> Dataset:
    """One record per (image, label present): that label's objects only, ``query`` naming it.

    The ``image_id`` becomes ``<image_id>/<label>`` so every record stays unique for COCO
    evaluation; images are not decoded (rows are selected by index).
    """
    rows, image_ids, queries, objects_per_row, crowds_per_row = [], [], [], [], []
    crowd_column = dataset["crowd_regions"] if "crowd_regions" in dataset.column_names else [[]] * len(dataset)
    for row, (image_id, objects, crowds) in enumerate(zip(dataset["image_id"], dataset["objects"], crowd_column)):
        for label in dict.fromkeys(obj["label"] for obj in objects):  # first-appearance order, no repeats
            rows.append(row)
            image_ids.append(f"{image_id}/{label}")
            queries.append(label)
            objects_per_row.append([obj for obj in objects if obj["label"] == label])
            crowds_per_row.append([crowd for crowd in crowds if crowd["label"] == label])  # the ignore regions of that class
    selected = dataset.select(rows)
    features = selected.features
    replaced = {"image_id": image_ids, "objects": objects_per_row, "crowd_regions": crowds_per_row}
    replaced = {name: values for name, values in replaced.items() if name in features}
    selected = selected.remove_columns(list(replaced))
    for name, values in replaced.items():
        selected = selected.add_column(name, values, feature=features[name])
    return selected.add_column("query", queries)


def task_prompts(dataset: Dataset, family: Family, task: str, class_names: list[str]) -> list[str]:
    """Each record's instruction: the detection prompt, or for grounding the prompt naming its ``query``."""
    if task == "detection":
        return [detection_prompt(family, class_names)] * len(dataset)
    if task == "grounding":
        if "query" not in dataset.column_names:
            raise ValueError("grounding needs a 'query' column naming each record's class; run expand_for_grounding first")
        return [grounding_prompt(family, label) for label in dataset["query"]]
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def format_detection_messages(prompt: str, answer: str | None = None, system_prompt: str = "") -> list[dict]:
    """The system turn (only when ``system_prompt`` is given), the user turn (image + prompt) and, when ``answer`` is given, the assistant turn."""
    # Without a system turn each family's chat template applies its own default: Qwen2-VL's and
    # Qwen2.5-VL's insert "You are a helpful assistant.", Qwen3-VL's inserts none (helpers.families.registry).
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def generation_prompt(processor, chat_template_kwargs: dict | None = None) -> str:
    """The text the chat template appends to open the assistant's turn (what precedes every answer)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    options = chat_template_kwargs or {}
    source = getattr(processor.tokenizer, "name_or_path", "") or "this model"
    try:
        without = processor.apply_chat_template(messages, tokenize=False, **options)
        with_prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **options)
    except TemplateError as error:  # e.g. a thinking-only checkpoint: "Disabling thinking is not supported."
        raise ValueError(f"{source}: its chat template refuses the options {options}: {error}. {NO_REASONING}") from error
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError(f"the chat template writes no generation prompt after the chat: {with_prompt[len(without):]!r}")
    prompt = with_prompt[len(without) :]
    # An open think block would make every answer start with reasoning the labels and the reader do not hold.
    if prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE):
        raise ValueError(f"{source}: with the options {options} its chat template opens a reasoning block ({prompt!r}). {NO_REASONING}")
    return prompt


def answer_for(objects: list[dict], family: Family, image_size: tuple[int, int], min_pixels: int, max_pixels: int) -> str:
    """The target answer for ``objects`` (pixel boxes of an image of ``image_size``), in the frame of what the processor makes of it."""
    return to_model_answer(objects, family, image_size, resized_size(family, *image_size, min_pixels, max_pixels))


def add_chat_columns(
    dataset: Dataset, family: Family, prompts: str | list[str], min_pixels: int, max_pixels: int, system_prompt: str = ""
) -> Dataset:
    """Add the ``system_prompt`` ("": the template's default), ``prompt`` (one for all, or one per record) and target ``answer`` columns; images are not decoded."""
    prompts = [prompts] * len(dataset) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(dataset):
        raise ValueError(f"got {len(prompts)} prompts for {len(dataset)} records")
    answers = [
        answer_for(objects, family, (width, height), min_pixels, max_pixels)
        for objects, width, height in zip(dataset["objects"], dataset["width"], dataset["height"])
    ]
    dataset = dataset.add_column("system_prompt", [system_prompt] * len(dataset))
    return dataset.add_column("prompt", prompts).add_column("answer", answers)


def answer_budget_report(tokenizer, answers: list[str], max_new_tokens: int) -> str:
    """How many tokens the answers take (with the end-of-turn token) against ``max_new_tokens``, and how many would be cut."""
    lengths = [len(tokenizer(answer, add_special_tokens=False).input_ids) + 1 for answer in answers]
    report = f"answers: {min(lengths)}..{max(lengths)} tokens (with end-of-turn); max_new_tokens={max_new_tokens}"
    too_long = sum(n > max_new_tokens for n in lengths)
    if too_long:
        report += f"\nWARNING: {too_long} of {len(lengths)} answers exceed max_new_tokens and will be cut; raise it"
    return report
