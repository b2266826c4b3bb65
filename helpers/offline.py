"""The offline profile's model: a tiny random-initialised Qwen-VL checkpoint built locally.

No machine here reaches the model hub, so tests and the README demo build a checkpoint directory
from the family's tiny recipe (``helpers.families.registry``), a tokenizer trained here, and the family's published
chat template, processor and generation configs (``hub_configs/``). Everything after
"a checkpoint directory exists" is the code path a hub id takes (``from_pretrained``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
import transformers
from transformers import AutoModelForImageTextToText, GenerationConfig, PretrainedConfig
from transformers.models.qwen2 import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from helpers.families.boxes import to_model_answer
from helpers.families.registry import FAMILIES, HUB_CONFIGS_DIR, QWEN_DEFAULT_SYSTEM_PROMPT, Family
from helpers.runtime.checks import expand_path
from helpers.families.chat import detection_prompt, grounding_prompt
from helpers.families.processors import load_saved_processor
from helpers.data.synthetic import CLASS_STYLES

# The special tokens of the Qwen2/2.5/3-VL vocabularies, in their order there (ids differ here).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added (not special) tokens of the Qwen3 and Qwen3.5 vocabularies that the chat templates write: Qwen3.5's
# answers open with an empty think block.
QWEN_ADDED_TOKENS = ("<think>", "</think>")

OFFLINE_PREFIX = "offline:"  # model_id "offline:qwen2_vl" = the tiny random checkpoint built here

# Text the tiny tokenizer is trained on: the words, digits and punctuation prompts and answers
# use. Digits are split one per token by Qwen's pre-tokenizer regex, as in the real vocabulary.
TOKENIZER_CORPUS = (
    "You are a helpful assistant. Detect every object in the image. "
    "Locate the objects and output their bounding boxes as JSON. "
    'Output a JSON list: [{"bbox_2d": [12, 34, 56, 78], "label": "red circle"}] '
    "```json\n[\n]\n``` (0,1),(2,3) "
    "red green blue yellow purple orange white black gray cyan "
    "circle square triangle rectangle ellipse star cross object shape person car dog cat "
    "the a an of and in on with box boxes bounding coordinates label labels none "
    "0 1 2 3 4 5 6 7 8 9 , . : ; [ ] { } ( ) \" ' - _ \n"
)
# Enough merges that this project's own chat turns, prompts and answer syntax become a few tokens
# each: shorter examples, faster steps (README, Does it learn?).
TINY_VOCAB_SIZE = 800  # an upper bound: this corpus runs out of merges at about 525 tokens


def tokenizer_corpus() -> str:
    """The tokenizer's training text: the word list plus every chat turn, prompt and answer form we write."""
    classes = list(CLASS_STYLES)
    texts = [TOKENIZER_CORPUS, f"system\n{QWEN_DEFAULT_SYSTEM_PROMPT}", "user\n", "assistant\n", "assistant\n<think>\n\n</think>\n\n["]
    for family in FAMILIES.values():
        texts.append(detection_prompt(family, classes[:3]))
        texts += [grounding_prompt(family, label) for label in classes]
        # Two objects per class, so the separators between answer items are learnt too.
        objects = [{"label": label, "bbox_xyxy_px": [1.0, 2.0, 3.0, 4.0]} for label in classes for _ in range(2)]
        texts.append(to_model_answer(objects, family, (10, 10), (10, 10)))
    return "\n".join(texts)


TINY_ROPE_THETA = 10.0  # see tiny_config: spatial rotary frequencies the tiny model can use
TINY_SIZES = {  # text width, layers, heads; vision depth and width, shared by every family's tiny model
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vision_depth": 2,
    "vision_hidden_size": 64,
    "vision_heads": 4,
}


def tiny_sizes(family: Family) -> dict[str, int]:
    """The tiny model's sizes for a family: TINY_SIZES with its recipe's overrides."""
    return TINY_SIZES | family.tiny.sizes


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Qwen2Tokenizer:
    """Train a byte-level BPE tokenizer with Qwen's pre-tokenizer and special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([tokenizer_corpus()] * 4, trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    qwen_tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",  # the chat models stop generating at the end of the turn
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=4096,
    )
    qwen_tokenizer.add_tokens(list(QWEN_ADDED_TOKENS))
    return qwen_tokenizer


def _special_ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    """Config fields that hold special-token ids, read from the tokenizer."""
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
        raise RuntimeError(f"tiny tokenizer lacks a Qwen vision token: {ids}")
    return ids


def tiny_config(family: Family, tokenizer: Qwen2Tokenizer) -> PretrainedConfig:
    """Build a tiny config for a Qwen-VL family from its recipe, wired to the tokenizer's special-token ids."""
    recipe = family.tiny
    s = tiny_sizes(family)
    # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width): 2 + 3 + 3 = 8, from the
    # highest to the lowest. With Qwen's theta 10000 the width axis would get at most 0.003 rad per
    # position: the tiny model could hardly tell image columns apart and learnt no locations. Theta 10
    # gives every axis at least 0.13 rad per position (README, Does it learn?).
    rope = {"rope_type": "default", "rope_theta": TINY_ROPE_THETA, "mrope_section": [2, 3, 3]}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_key_value_heads"],
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }
    # The vision towers' 2D rotary embedding has the same problem: at theta 10000 its 16-dim heads
    # turn by 1, 0.1, 0.01 and 0.001 rad per patch, so two of four frequencies see no neighbour.
    # Theta 10 turns them by 1, 0.56, 0.32 and 0.18 rad (README, Does it learn?).
    vision = {"depth": s["vision_depth"], "num_heads": s["vision_heads"], "spatial_merge_size": 2,
              "rope_parameters": {"rope_type": "axial", "rope_theta": TINY_ROPE_THETA}}
    config_class = getattr(transformers, recipe.config_class)
    return config_class(text_config=text | recipe.text(s), vision_config=vision | recipe.vision(s), **_special_ids(tokenizer))


def hub_config_files(family: Family) -> list[Path]:
    """The family's published processor config files (image, and video where one is published)."""
    return sorted((HUB_CONFIGS_DIR / family.model_type).glob("*preprocessor_config.json"))


def hub_generation_config(family: Family, tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """The family's published generation config with its token ids mapped to the tiny vocabulary."""
    values = json.loads((HUB_CONFIGS_DIR / family.model_type / "generation_config.json").read_text())
    first = family.first_special_token_id  # the real vocabulary's special tokens follow in our order
    real_to_tiny = {first + i: tokenizer.convert_tokens_to_ids(token) for i, token in enumerate(QWEN_SPECIAL_TOKENS)}
    for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
        if isinstance(values.get(key), list):
            values[key] = [real_to_tiny[i] for i in values[key]]
        elif values.get(key) is not None:
            values[key] = real_to_tiny[values[key]]
    values.pop("transformers_version", None)
    return GenerationConfig(**values)


def hub_chat_template(family: Family) -> str:
    """The family's published chat template (its default system turn included, or not)."""
    return json.loads((HUB_CONFIGS_DIR / family.model_type / "chat_template.json").read_text())["chat_template"]


def _build_fingerprint(family: Family, seed: int, tokenizer: Qwen2Tokenizer, config: PretrainedConfig) -> str:
    """Hash of everything that decides the checkpoint (the whole config and the published files too), so a changed recipe rebuilds the cache."""
    recipe = json.dumps(
        {"family": family.model_type, "seed": seed, "config": config.to_dict(), "vocab": tokenizer.get_vocab(),
         "hub_files": {p.name: p.read_text() for p in HUB_CONFIGS_DIR.joinpath(family.model_type).iterdir()}},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def build_tiny_checkpoint(family: Family, out_dir: str | Path, seed: int = 0) -> Path:
    """Write (once) a tiny random-initialised checkpoint of a Qwen-VL family to ``out_dir``, laid out as the published ones."""
    out_dir = Path(out_dir)
    stamp = out_dir / "offline_build.json"
    tokenizer = train_tiny_tokenizer()
    config = tiny_config(family, tokenizer)
    fingerprint = _build_fingerprint(family, seed, tokenizer, config)
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return out_dir
    if out_dir.is_symlink() or (out_dir.exists() and not stamp.is_file() and any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} exists and is not an offline checkpoint built here (no {stamp.name}), so it will not be replaced; "
            "point offline_model_dir at another folder"
        )
    tokenizer.chat_template = hub_chat_template(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = hub_generation_config(family, tokenizer)
    # Build in a sibling temp folder and move it in place, so an interrupted build leaves no
    # half-written checkpoint that a later run would take for a cached one.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    for path in hub_config_files(family):  # the published image (and video) processor settings, as published
        shutil.copyfile(path, tmp_dir / path.name)
    load_saved_processor(tmp_dir, family)  # the stock processor loads from these files, or the build stops here
    (tmp_dir / "offline_build.json").write_text(json.dumps({"family": family.model_type, "seed": seed, "fingerprint": fingerprint}))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return out_dir


def resolve_model_path(model_id: str, offline_model_dir: str | Path) -> str:
    """Hub id or local path as given; ``offline:<family>`` builds (once) and returns a tiny checkpoint."""
    if not model_id.startswith(OFFLINE_PREFIX):
        return model_id
    model_type = model_id.removeprefix(OFFLINE_PREFIX)
    if model_type not in FAMILIES:
        raise ValueError(f"model_id={model_id!r}: expected offline:<model_type> with model_type one of {', '.join(FAMILIES)}")
    return str(build_tiny_checkpoint(FAMILIES[model_type], expand_path(offline_model_dir) / model_type))
