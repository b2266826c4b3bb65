"""Each family's published chat templates, on its real vocabulary: our chats and collator labels hold there too.

The offline models use a tiny vocabulary; here the same collators run on the real byte-level BPEs
(``tests.support.real_vocab``), where for instance "\\n\\n" is one token and "<think>" an added one:
Qwen2's for Qwen2-VL to Qwen3-VL, Qwen3.5's own for Qwen3.5 and the checkpoints that reuse its
architecture and ``model_type`` (Qwen3.6, Qwen3.8), each with the template its checkpoints ship.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import trl

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import add_chat_columns, detection_prompt, format_detection_messages, generation_prompt
from helpers.families.processors import load_processor
from helpers.evaluate.generation import chat_texts
from helpers.families.registry import get_family
from tests.support.notebook_cells import run_tagged_cells
from tests.support.real_vocab import real_processor, real_qwen2_tokenizer
from helpers.data.synthetic import make_synthetic_dataset
from tests.cases import FAMILIES

CELLS = run_tagged_cells("collators")
IGNORE = CELLS["IGNORE_INDEX"]


def test_the_real_vocabulary_has_the_published_ids():
    tokenizer = real_qwen2_tokenizer()
    assert tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|image_pad|>", "<think>"]) == [151645, 151655, 151667]
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]  # one token per digit


def assert_labels_are_the_answer(processor, family) -> None:
    """Both label-masking collators on real tokens: assistant-only labels are the answer and <|im_end|>, and evaluation prompts the same text."""
    options = family.chat_template_kwargs
    dataset = make_synthetic_dataset(4, seed=11, max_objects=4, min_side_px=60, max_side_px=200)
    prompt = detection_prompt(family, ["red circle", "green square"])
    examples = list(add_chat_columns(dataset, family, prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS))
    tokenizer = processor.tokenizer
    for name in ("AssistantOnlyCollator", "VisionAndPaddingMaskingCollator"):
        batch = CELLS[name](processor, options)(examples)
        for row, example in enumerate(examples):
            real = batch["attention_mask"][row].bool()
            ids, labels = batch["input_ids"][row][real], batch["labels"][row][real]
            decoded = tokenizer.decode(ids[labels != IGNORE], skip_special_tokens=False)
            chat = processor.apply_chat_template(format_detection_messages(example["prompt"], example["answer"]), tokenize=False, **options)
            if name == "AssistantOnlyCollator":
                assert decoded == example["answer"] + "<|im_end|>"
                # The prompt at inference ends with the generation prompt, so the tokens before the answer are exactly its tokens.
                prompt_ids = tokenizer.encode(generation_prompt(processor, options), add_special_tokens=False)
                start = int((labels != IGNORE).nonzero()[0])
                assert ids[start - len(prompt_ids) : start].tolist() == prompt_ids
                # Evaluation renders the chat the model answers: the training chat up to its answer.
                (asked,) = chat_texts(processor, [example["prompt"]], [None], options)
                assert chat == asked + example["answer"] + "<|im_end|>\n"
            else:
                assert decoded == chat.replace("<|vision_start|><|image_pad|><|vision_end|>", "")
        assert not torch.isin(batch["labels"], torch.tensor(tokenizer.convert_tokens_to_ids(["<|image_pad|>"]))).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_the_answer_on_the_real_vocabulary(family):
    assert_labels_are_the_answer(real_processor(family, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS), family)


# ------------------------------------------------ the checkpoints on Qwen3.5's architecture and their templates

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
# The chat templates the checkpoints ship, as TRL 1.16.0 carries them (its README: "Original ... chat
# template"; it matches a loaded processor's template by exact equality). Each md5 is also that of the
# checkpoint's own chat_template.jinja on the hub, as published independently (docs/families.md).
PUBLISHED_TEMPLATES = {
    "qwen3_5_nothink.jinja": "3dd635d8e716410fb409839dfac61ea9",  # Qwen3.5-0.8B, 2B: no thinking by default
    "qwen3_5_think.jinja": "94f89e03284d911fc65d06422439fd79",  # Qwen3.5-4B, 9B, 27B, 35B-A3B and larger
    "qwen3_6.jinja": "52b6d51ae5b203cb67e64b648494dad2",  # Qwen3.6-27B, 35B-A3B
    "qwen3_8.jinja": "519239a4908bb1f805bbce5fa8c8a242",  # Qwen3.8-27B: reasoning_effort xhigh/medium/low, thinking kept in history
}
QWEN3_5_ARCHITECTURE = [get_family("qwen3_5"), get_family("qwen3_5_moe")]


def published_template(name: str) -> str:
    """A checkpoint's chat template, checked byte for byte against its published md5."""
    text = (TRL_TEMPLATES / name).read_text(encoding="utf-8")
    assert hashlib.md5(text.encode()).hexdigest() == PUBLISHED_TEMPLATES[name], f"{name} is no longer the checkpoint's published template"
    return text


@pytest.mark.parametrize("family", QWEN3_5_ARCHITECTURE)
@pytest.mark.parametrize("template", PUBLISHED_TEMPLATES)
def test_labels_are_the_answer_with_each_published_qwen3_5_architecture_template(family, template):
    processor = real_processor(family, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    processor.chat_template = published_template(template)
    # Non-thinking mode: no reasoning-effort system turn (Qwen3.8's default xhigh adds one), an empty think block to answer after.
    assert generation_prompt(processor, family.chat_template_kwargs) == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    (asked,) = chat_texts(processor, ["Find the cats."], [None], family.chat_template_kwargs)
    assert asked.startswith("<|im_start|>user\n")
    assert_labels_are_the_answer(processor, family)


THINKING_ONLY = (  # the way a thinking-only checkpoint's template refuses non-thinking mode
    "{% if enable_thinking is defined and enable_thinking is false %}{{ raise_exception('Disabling thinking is not supported.') }}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content[0].text }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@pytest.mark.parametrize(
    "template,options,match",
    [
        ("qwen3_5_think.jinja", {}, "opens a reasoning block"),  # thinking is its default
        ("qwen3_6.jinja", {"preserve_thinking": False}, "opens a reasoning block"),
        ("qwen3_8.jinja", {"reasoning_effort": "low"}, "opens a reasoning block"),  # the lowest effort still thinks
        ("qwen3_8.jinja", {"reasoning_effort": "none"}, "refuses the options .*Unexpected reasoning effort none"),
        (THINKING_ONLY, {"enable_thinking": False}, "refuses the options .*Disabling thinking is not supported"),
    ],
    ids=["qwen3.5-think-default", "qwen3.6-default", "qwen3.8-low", "qwen3.8-none", "thinking-only"],
)
def test_a_template_that_would_think_is_refused_with_the_reason(template, options, match):
    processor = real_processor(get_family("qwen3_5"), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    processor.chat_template = published_template(template) if template in PUBLISHED_TEMPLATES else template
    with pytest.raises(ValueError, match=f"{match}.*Detection answers carry no reasoning"):
        generation_prompt(processor, options)


def test_loading_a_checkpoint_whose_template_cannot_stop_thinking_is_refused(tiny_checkpoints, tmp_path):
    import shutil

    folder = Path(shutil.copytree(tiny_checkpoints["qwen3_5"], tmp_path / "thinking_only"))
    for stale in folder.glob("chat_template.*"):
        stale.unlink()
    (folder / "chat_template.jinja").write_text(THINKING_ONLY)
    with pytest.raises(ValueError, match="thinking_only: its chat template refuses the options {'enable_thinking': False}"):
        load_processor(folder, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
