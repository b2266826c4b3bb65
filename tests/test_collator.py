"""The notebook's inline collators, run from the notebook source itself, for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trl
from transformers import AutoModelForImageTextToText
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import TAGS, get_family
from helpers.families.chat import format_detection_messages, generation_prompt
from helpers.families.processors import load_processor
from tests.cases import FAMILIES, chat_examples
from tests.support.notebook_cells import run_tagged_cells
from helpers.data.images import open_image

CELLS = run_tagged_cells("collators")
IGNORE = CELLS["IGNORE_INDEX"]
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
COLLATORS = ("VisionAndPaddingMaskingCollator", "AssistantOnlyCollator", "PaddingFreeCollator")


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    """Family -> the tiny model in eval mode (sdpa), loaded once for the module."""
    loaded = {}
    for family in FAMILIES:
        model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family], attn_implementation="sdpa")
        loaded[family] = model.eval()
    return loaded


def make_collator(name: str, processor, model, family: str):
    """One of the notebook's collators with the family's chat options; the padding-free one also takes the model's rope-index function."""
    options = family.chat_template_kwargs
    if name == "PaddingFreeCollator":  # (model is only read here)
        return CELLS[name](processor, model.model.get_rope_index, options)
    return CELLS[name](processor, options)


def sample_spans(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, end) of each sample: the non-padding span of a row, or a packed segment."""
    if "attention_mask" in batch:
        spans = []
        for row, mask in enumerate(batch["attention_mask"]):
            real = mask.nonzero().flatten()
            spans.append((row, int(real[0]), int(real[-1]) + 1))
        return spans
    starts = (batch["position_ids"][0, 0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    return [(0, a, b) for a, b in zip(starts[:-1], starts[1:])]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("collator_name", COLLATORS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labelled_tokens_decode_exactly(tiny_checkpoints, models, family, collator_name, padding_side):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    processor.tokenizer.padding_side = padding_side
    tokenizer = processor.tokenizer
    examples = chat_examples(family)
    assert len({(e["width"], e["height"]) for e in examples}) == len(examples)  # mixed image sizes
    assert len({len(e["answer"]) for e in examples}) > 1  # and answer lengths
    batch = make_collator(collator_name, processor, models[family], family)(examples)
    vision_ids = torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS])
    labels, input_ids = batch["labels"], batch["input_ids"]
    labelled = labels != IGNORE
    assert (labels[labelled] == input_ids[labelled]).all()
    assert not (labelled & torch.isin(input_ids, vision_ids)).any()  # no vision token ever carries a label
    if "attention_mask" in batch:
        assert not labelled[batch["attention_mask"] == 0].any()  # nor any padding
        assert len({int(m.sum()) for m in batch["attention_mask"]}) > 1  # the batch really is padded
    spans = sample_spans(batch)
    assert len(spans) == len(examples)
    for (row, start, end), example in zip(spans, examples):
        span_labelled = labelled[row, start:end]
        decoded = tokenizer.decode(input_ids[row, start:end][span_labelled], skip_special_tokens=False)
        if collator_name == "VisionAndPaddingMaskingCollator":
            messages = format_detection_messages(example["prompt"], example["answer"], example["system_prompt"])
            chat = processor.apply_chat_template(messages, tokenize=False, **family.chat_template_kwargs)
            assert decoded == chat.replace("<|vision_start|><|image_pad|><|vision_end|>", "")  # everything but vision
        else:
            assert decoded == example["answer"] + "<|im_end|>"
            positions = span_labelled.nonzero().flatten()
            assert int(positions[-1] - positions[0] + 1) == len(positions)  # one contiguous span


@pytest.mark.parametrize("family", [get_family("qwen2_vl"), get_family("qwen2_5_vl"), get_family("qwen3_5")])  # tags, JSON, and a template with a think block
@pytest.mark.parametrize("collator_name", ["AssistantOnlyCollator", "PaddingFreeCollator"])
def test_an_image_without_objects_trains_the_empty_answer(tiny_checkpoints, models, family, collator_name):
    if collator_name == "PaddingFreeCollator" and family.padding_free_refusal:
        pytest.skip(f"{family} refuses padding-free packing")
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    examples = chat_examples(family, n=6, empty_fraction=0.5)
    empty = [i for i, e in enumerate(examples) if not e["objects"]]
    assert empty and len(empty) < len(examples)
    batch = make_collator(collator_name, processor, models[family], family)(examples)
    labelled = batch["labels"] != IGNORE
    for index, (row, start, end) in enumerate(sample_spans(batch)):
        decoded = processor.tokenizer.decode(batch["input_ids"][row, start:end][labelled[row, start:end]], skip_special_tokens=False)
        assert decoded == examples[index]["answer"] + "<|im_end|>"
        if index in empty:  # "[]" for JSON families; for Qwen2-VL's tags, the turn ends at once
            assert decoded == ("" if family.answer_syntax == TAGS else "[]") + "<|im_end|>"


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_free_structure_matches_the_padded_batch(tiny_checkpoints, models, family):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = models[family]
    examples = chat_examples(family)
    padded = make_collator("AssistantOnlyCollator", processor, model, family)(examples)
    packed = make_collator("PaddingFreeCollator", processor, model, family)(examples)
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    total = sum(lengths)
    assert set(packed) == {"input_ids", "labels", "mm_token_type_ids", "position_ids", "pixel_values", "image_grid_thw"}
    assert packed["input_ids"].shape == packed["labels"].shape == packed["mm_token_type_ids"].shape == (1, total)
    assert packed["position_ids"].shape == (4, 1, total)
    assert torch.equal(packed["pixel_values"], padded["pixel_values"])
    assert torch.equal(packed["image_grid_thw"], padded["image_grid_thw"])
    # The model's own M-RoPE positions for the padded batch, sample by sample.
    padded_positions, _ = model.model.get_rope_index(
        padded["input_ids"], padded["mm_token_type_ids"], image_grid_thw=padded["image_grid_thw"], attention_mask=padded["attention_mask"]
    )
    offset = 0
    for row, length in enumerate(lengths):
        keep = padded["attention_mask"][row].bool()
        segment = slice(offset, offset + length)
        assert torch.equal(packed["position_ids"][0, 0, segment], torch.arange(length))  # the text row restarts
        assert torch.equal(packed["position_ids"][1:, 0, segment], padded_positions[:, row, keep])
        assert torch.equal(packed["input_ids"][0, segment], padded["input_ids"][row, keep])
        assert torch.equal(packed["labels"][0, segment], padded["labels"][row, keep])
        assert packed["labels"][0, offset] == IGNORE  # a sample's first token is never a target
        offset += length


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss_or_the_family_refuses_packing(tiny_checkpoints, family, attention):
    # Both attention implementations available on CPU separate packed samples in this transformers
    # version, so the equivalence is proven here; flash-attention's varlen path runs in tests/test_cuda.py.
    # A family that refuses packing must really need to: its packed loss differs.
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family], attn_implementation=attention).eval()
    examples = chat_examples(family, n=3, seed=5)
    padded = make_collator("AssistantOnlyCollator", processor, model, family)(examples)
    packed = make_collator("PaddingFreeCollator", processor, model, family)(examples)
    with torch.no_grad():
        padded_out = model(**padded, use_cache=False)
        packed_out = model(**packed, use_cache=False)
    real = padded_out.logits[padded["attention_mask"].bool()]  # rows in order, padding dropped
    if family.padding_free_refusal:
        assert (packed_out.logits[0] - real).abs().max() > 1e-3  # state leaks from one sample into the next
        return
    assert abs(float(packed_out.loss) - float(padded_out.loss)) < 1e-5
    assert torch.allclose(packed_out.logits[0], real, atol=1e-4)


def test_packed_samples_do_not_see_each_other(tiny_checkpoints, models):
    # Changing the first sample must leave the second sample's logits untouched.
    processor = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = models[get_family("qwen2_vl")]
    collator = CELLS["PaddingFreeCollator"](processor, model.model.get_rope_index)
    first, second = chat_examples(get_family("qwen2_vl"), n=2, seed=5)
    other_first = chat_examples(get_family("qwen2_vl"), n=1, seed=99)[0]
    with torch.no_grad():
        a = model(**collator([first, second]), use_cache=False).logits[0]
        b = model(**collator([other_first, second]), use_cache=False).logits[0]
    n_second = collator([second])["input_ids"].shape[1]
    assert torch.allclose(a[-n_second:], b[-n_second:], atol=1e-5)


# ---------------------------------------------------------------- TRL's own assistant-only path

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
TRL_TRAINING_TEMPLATE = {  # TRL's training templates; Qwen2-VL ships the Qwen2.5-VL template byte for byte
    "qwen2_vl": "qwen2_5_vl_training.jinja",
    "qwen2_5_vl": "qwen2_5_vl_training.jinja",
    "qwen3_vl": "qwen3_vl_training.jinja",
    "qwen3_vl_moe": "qwen3_vl_training.jinja",  # Qwen3-VL-30B-A3B ships the Qwen3-VL template
    "qwen3_5": "qwen3_5_nothink_training.jinja",  # Qwen3.5-2B and smaller
    "qwen3_5_moe": "qwen3_5_think_training.jinja",  # Qwen3.5-4B and larger
}


def end_of_turn_generation_template(answer_prefix: str) -> str:
    """A Qwen-VL template whose {% generation %} block opens after ``answer_prefix`` and closes right after <|im_end|>, as our collator trains."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' %}" + answer_prefix.replace("\n", "{{ '\\n' }}") + "{% generation %}"
        "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>{% endgeneration %}{{ '\\n' }}"  # trim_blocks eats a bare newline
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    )


def think_block(processor, family: str) -> str:
    """What the family's generation prompt holds after "<|im_start|>assistant\\n": Qwen3.5's empty think block, else nothing."""
    return generation_prompt(processor, family.chat_template_kwargs).removeprefix("<|im_start|>assistant\n")


def trl_labels(processor, examples: list[dict], chat_template: str) -> torch.Tensor:
    """Labels from TRL's vision collator with ``assistant_only_loss`` and the given template."""
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True, chat_template=chat_template)
    trl_examples = [
        {"messages": format_detection_messages(e["prompt"], e["answer"], e["system_prompt"]), "images": [open_image(e["image"])]}
        for e in examples
    ]
    return collator(trl_examples)["labels"]


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_assistant_only_path_gives_identical_labels(tiny_checkpoints, family):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    processor.tokenizer.padding_side = "right"  # TRL pads on the right
    examples = chat_examples(family, system_prompt="Find the shapes.")  # the templates differ in their default system turn
    ours = make_collator("AssistantOnlyCollator", processor, None, family)(examples)["labels"]
    assert torch.equal(trl_labels(processor, examples, end_of_turn_generation_template(think_block(processor, family))), ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_shipped_template_differs_only_by_the_newline_and_the_prompted_think_block(tiny_checkpoints, family):
    # TRL's own training templates put the "\n" after <|im_end|> inside {% generation %}; generation stops
    # at <|im_end|>, so we do not train that newline. Its Qwen3.5 templates also train the empty think block,
    # which our generation prompt holds (enable_thinking=False), so we do not train it. Every other label is identical.
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    processor.tokenizer.padding_side = "right"
    tokenizer = processor.tokenizer
    examples = chat_examples(family, system_prompt="Find the shapes.")
    ours = make_collator("AssistantOnlyCollator", processor, None, family)(examples)["labels"]
    theirs = trl_labels(processor, examples, (TRL_TEMPLATES / TRL_TRAINING_TEMPLATE[family.model_type]).read_text())
    newline_id = tokenizer.encode("\n", add_special_tokens=False)
    think_ids = tokenizer.encode(think_block(processor, family), add_special_tokens=False)
    assert len(newline_id) == 1 and (family.model_type.startswith("qwen3_5")) == bool(think_ids)
    assert ((ours != IGNORE) <= (theirs != IGNORE)).all() and torch.equal(ours[ours != IGNORE], theirs[ours != IGNORE])
    for row in range(len(examples)):
        extra = ((ours[row] == IGNORE) & (theirs[row] != IGNORE)).nonzero().flatten().tolist()
        answer_start = int((ours[row] != IGNORE).nonzero()[0])
        end_of_turn = int((ours[row] != IGNORE).nonzero()[-1])
        assert ours[row, end_of_turn] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert extra == list(range(answer_start - len(think_ids), answer_start)) + [end_of_turn + 1]
        assert theirs[row, extra].tolist() == think_ids + newline_id


# ---------------------------------------------------------------- errors and the collator choice


def test_missing_assistant_turn_is_a_clear_error(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    collator = CELLS["AssistantOnlyCollator"](processor)
    # The answer text itself may not contain the marker; simulate a template without an assistant turn.
    collator.answer_prefix_ids = processor.tokenizer.encode("<|im_start|>nobody\n", add_special_tokens=False)
    with pytest.raises(ValueError, match="example 0: no assistant turn"):
        collator(chat_examples(get_family("qwen2_vl"), n=1))


def test_truncated_answer_is_a_clear_error(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    collator = CELLS["AssistantOnlyCollator"](processor)
    collator.end_of_turn_id = processor.tokenizer.convert_tokens_to_ids("<|quad_end|>")  # never in the text
    with pytest.raises(ValueError, match="example 0: the answer has no end-of-turn token"):
        collator(chat_examples(get_family("qwen2_vl"), n=1))


def test_find_subsequence_end():
    find = CELLS["find_subsequence_end"]
    assert find([1, 2, 3, 1, 2, 4], [1, 2]) == 5  # the last occurrence
    assert find([1, 2, 3], [2, 3]) == 3
    assert find([1, 2, 3], [4]) == -1


@pytest.mark.parametrize(
    "padding_free,attention,expected,why",
    [
        (False, "sdpa", "AssistantOnlyCollator", "padding_free is off"),
        (True, "sdpa", "PaddingFreeCollator", "dense mask"),
        (True, "eager", "PaddingFreeCollator", "dense mask"),
        (True, "flash_attention_2", "PaddingFreeCollator", "padding-free with flash_attention_2"),
    ],
)
def test_training_collator_choice(tiny_checkpoints, models, padding_free, attention, expected, why):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = models[get_family("qwen2_vl")]
    original = model.config._attn_implementation
    model.config._attn_implementation = attention  # only read by the choice, never run
    try:
        collator, reason = CELLS["choose_training_collator"](processor, model, padding_free, get_family("qwen2_vl"))
    finally:
        model.config._attn_implementation = original
    assert type(collator).__name__ == expected and why in reason


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.padding_free_refusal])
def test_a_family_that_cannot_pack_trains_assistant_only_and_says_why(tiny_checkpoints, models, family):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    collator, reason = CELLS["choose_training_collator"](processor, models[family], True, family)
    assert type(collator).__name__ == "AssistantOnlyCollator"
    assert reason == f"assistant-only: {family.name} cannot be packed: {family.padding_free_refusal}"
