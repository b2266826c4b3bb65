"""The offline profile's tiny checkpoints load through the same from_pretrained path as hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import QWEN_DEFAULT_SYSTEM_PROMPT
from helpers.families.chat import detection_prompt, format_detection_messages, grounding_prompt
from helpers import offline
from helpers.offline import QWEN_SPECIAL_TOKENS, build_tiny_checkpoint, train_tiny_tokenizer
from helpers.families.processors import load_processor
from helpers.families.registry import get_family
from tests.cases import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_reloads_and_trains_one_step(tiny_checkpoints, family):
    path = tiny_checkpoints[family]
    assert AutoConfig.from_pretrained(path).model_type == family.model_type
    processor = load_processor(path, min_pixels=56 * 56, max_pixels=112 * 112)
    model = AutoModelForImageTextToText.from_pretrained(path)
    text = processor.apply_chat_template(format_detection_messages("Detect.", "red circle"), tokenize=False)
    batch = processor(text=[text], images=[[Image.new("RGB", (90, 60), "red")]], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and 3.0 < loss.item() < 10.0  # about ln(vocab) for random weights
    assert all(p.grad is not None for p in model.model.language_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_special_ids_match_tokenizer(tiny_checkpoints, family):
    config = AutoConfig.from_pretrained(tiny_checkpoints[family])
    tokenizer = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS).tokenizer
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert config.text_config.vocab_size == len(tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_is_laid_out_as_the_published_one(tiny_checkpoints, family):
    # The published processor files, unchanged, and no transformers-5-only processor_config.json:
    # loading takes the path a hub id takes.
    folder = Path(tiny_checkpoints[family])
    for published in offline.hub_config_files(family):
        assert (folder / published.name).read_bytes() == published.read_bytes()
    published_video = (offline.HUB_CONFIGS_DIR / family.model_type / "video_preprocessor_config.json").is_file()
    assert (folder / "video_preprocessor_config.json").is_file() == published_video == (family.model_type not in ("qwen2_vl", "qwen2_5_vl"))
    assert not (folder / "processor_config.json").exists()
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    "family,published",
    [
        (get_family("qwen2_vl"), {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}),
        (get_family("qwen2_5_vl"), {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}),
        (get_family("qwen3_vl"), {"do_sample": True, "repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.8, "top_k": 20}),
        (get_family("qwen3_vl_moe"), {"do_sample": True, "repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.8, "top_k": 20}),
        (get_family("qwen3_5"), {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 20}),
        (get_family("qwen3_5_moe"), {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 20}),
    ],
)
def test_checkpoint_carries_the_published_generation_config(tiny_checkpoints, family, published):
    saved = json.loads((Path(tiny_checkpoints[family]) / "generation_config.json").read_text())
    assert {key: saved[key] for key in published} == published
    tokenizer = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS).tokenizer
    # The real ids 151645 and 151643 are <|im_end|> and <|endoftext|>; here they are the tiny vocabulary's.
    assert saved["eos_token_id"] == [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert saved["pad_token_id"] == saved["bos_token_id"] == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_tokenizer_splits_digits_and_keeps_special_tokens_whole():
    tokenizer = train_tiny_tokenizer()
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]
    for token in QWEN_SPECIAL_TOKENS:
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = '[{"bbox_2d": [12, 345, 6, 78], "label": "red circle"}]'
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_learnt_our_prompts_as_words(family):
    # Short sequences are fast steps: each prompt word is one token; only digits and syntax stay split.
    tokenizer = train_tiny_tokenizer()
    classes = ["red circle", "green square", "blue triangle"]
    for prompt in (detection_prompt(family, classes), grounding_prompt(family, "red circle")):
        tokens = tokenizer.tokenize(prompt)
        words = prompt.split(" Answer with")[0].rstrip(".").replace(",", "").split()
        assert [t.lstrip("Ġ") for t in tokens[: len(words) + 2] if t != ","][: len(words)] == words
    assert len(tokenizer.tokenize(QWEN_DEFAULT_SYSTEM_PROMPT)) <= 6


def test_build_is_cached_and_rebuilt_when_recipe_changes(tmp_path):
    out = build_tiny_checkpoint(get_family("qwen2_vl"), tmp_path / "m")
    weights = out / "model.safetensors"
    first_mtime = weights.stat().st_mtime_ns
    build_tiny_checkpoint(get_family("qwen2_vl"), tmp_path / "m")
    assert weights.stat().st_mtime_ns == first_mtime  # cached: not rewritten
    stamp = out / "offline_build.json"
    stamp.write_text(json.dumps({"fingerprint": "stale"}))
    build_tiny_checkpoint(get_family("qwen2_vl"), tmp_path / "m")
    assert json.loads(stamp.read_text())["fingerprint"] != "stale"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folder left behind


def test_any_config_change_rebuilds_the_cached_checkpoint(tmp_path, monkeypatch):
    out = build_tiny_checkpoint(get_family("qwen2_5_vl"), tmp_path / "m")
    before = json.loads((out / "offline_build.json").read_text())["fingerprint"]
    monkeypatch.setattr(offline, "TINY_ROPE_THETA", 20.0)  # also the vision tower's theta
    build_tiny_checkpoint(get_family("qwen2_5_vl"), tmp_path / "m")
    assert json.loads((out / "offline_build.json").read_text())["fingerprint"] != before
    assert AutoConfig.from_pretrained(out).vision_config.rope_parameters["rope_theta"] == 20.0


def test_same_seed_same_weights(tmp_path):
    a = AutoModelForImageTextToText.from_pretrained(build_tiny_checkpoint(get_family("qwen2_5_vl"), tmp_path / "a", seed=3))
    b = AutoModelForImageTextToText.from_pretrained(build_tiny_checkpoint(get_family("qwen2_5_vl"), tmp_path / "b", seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="expected offline:<model_type> with model_type one of qwen2_vl"):
        offline.resolve_model_path("offline:llava", tmp_path)


@pytest.mark.parametrize("family", [get_family("qwen2_vl"), get_family("qwen2_5_vl")])
def test_tiny_model_rotary_frequencies_let_it_see_image_positions(tiny_checkpoints, family):
    # M-RoPE gives (time, height, width) contiguous slices of the rotary frequencies, highest first;
    # the width slice must still turn by a usable angle per image column.
    text = AutoConfig.from_pretrained(tiny_checkpoints[family]).text_config
    head_dim = text.hidden_size // text.num_attention_heads
    theta, sections = text.rope_parameters["rope_theta"], text.rope_parameters["mrope_section"]
    inv_freq = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    width = inv_freq[sections[0] + sections[1] :]
    assert sum(sections) == head_dim // 2 and min(width) >= 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_vision_tower_rotary_frequencies_see_neighbouring_patches(tiny_checkpoints, family):
    # The vision tower's axial rotary splits head_dim/2 over (row, column): every frequency must turn
    # by a usable angle per patch, or that part of each head is blind to position.
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    inv_freq = model.model.visual.rotary_pos_emb.inv_freq
    assert inv_freq.min().item() >= 0.1, inv_freq.tolist()


@pytest.mark.parametrize(
    "family,text_layers",
    [(get_family("qwen2_vl"), 3), (get_family("qwen2_5_vl"), 2), (get_family("qwen3_vl"), 2)],  # Qwen2-VL's 0..1000 boxes get a third layer
)
def test_tiny_sizes_apply_family_overrides(tiny_checkpoints, family, text_layers):
    assert offline.tiny_sizes(family)["num_hidden_layers"] == text_layers
    config = AutoConfig.from_pretrained(tiny_checkpoints[family])
    assert config.text_config.num_hidden_layers == text_layers
    assert config.text_config.hidden_size == offline.TINY_SIZES["hidden_size"]  # the rest stays shared
