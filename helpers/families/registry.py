"""The Qwen-VL families, one record per ``config.model_type``: every fact that differs between them.

Every other module reads these records. Adding a family is one ``Family`` record here, with its
tiny recipe, plus the published config files in ``helpers/families/hub_configs/<model_type>/``.

Box conventions (what the pre-trained models write; ``helpers.families.boxes`` reads and writes them):
- Qwen2-VL: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`` with
  integers in 0..1000 of the image side (the Qwen repo's ``qwen-vl-finetune/tools/process_bbox.ipynb``,
  ``convert_to_qwen2vl_format``; QwenLM/Qwen3-VL#1486).
- Qwen2.5-VL: JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]`` in pixels of the image *after* the
  processor's resize, ``image_grid_thw * patch_size`` (Qwen2.5-VL technical report, arXiv:2502.13923:
  coordinates at native resolution "without relying on traditional normalization"; QwenLM/Qwen3-VL#931).
- Qwen3-VL and Qwen3-VL-MoE: the same JSON with integers in 0..1000 of the image side (Qwen3-VL README:
  "changed from the absolute coordinates used in Qwen2.5-VL to relative coordinates ranging from 0 to 1000";
  QwenLM/Qwen3-VL#1741, #1427).
- Qwen3.5 and Qwen3.5-MoE: the same JSON in 0..1000 (no Qwen3.5 grounding cookbook exists; a Qwen team member,
  QwenLM/Qwen3.8-Flash-Next#4: "grounding coordinates should still be relative coordinates normalized to
  [0, 1000]"; ms-swift's Qwen3_5Template keeps Qwen3-VL's norm_bbox "norm1000").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The published checkpoints' config, chat template, processor and generation files, one folder per model_type (see its README).
HUB_CONFIGS_DIR = Path(__file__).resolve().parent / "hub_configs"

NORM1000 = "norm1000"  # integers 0..1000 of the image side
RESIZED_PX = "resized_px"  # pixels of the image the processor feeds the model
TAGS = "tags"  # <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
JSON = "json"  # [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]
QWEN_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# LoRA blocks as regexes on module names (PEFT full-matches them), each hitting Linear layers only and
# anchored on its block: a plain `q_proj` or `mlp` target would also hit vision layers in some families.
LANGUAGE_LORA = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# The vision tower's attention and MLP layers: fc1/fc2 (Qwen2-VL), gate/up/down_proj (2.5), linear_fc1/2 (3).
VISION_LORA = r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj|linear_fc1|linear_fc2))"
# The patch merger(s) that project vision features into the language model (Qwen3-VL adds deepstack ones);
# in Qwen2/2.5-VL's merger mlp.1 is a GELU.
MERGER_LORA = r".*visual\.(merger|deepstack_merger_list\.\d+)\.(mlp\.[02]|linear_fc1|linear_fc2)"
DENSE_LORA_TARGETS = {"language": LANGUAGE_LORA, "vision": VISION_LORA, "merger": MERGER_LORA}
# Qwen3.5's language model also has Gated DeltaNet (linear attention) layers, with their own projections.
HYBRID_LANGUAGE_LORA = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj)"
# MoE experts are fused 3-D parameters, not Linear modules: PEFT adapts them through `target_parameters`.
EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


@dataclass(frozen=True)
class TinyRecipe:
    """How the offline profile builds the family's tiny random model (``helpers.offline.tiny_config``)."""

    config_class: str  # the transformers config class, e.g. "Qwen2VLConfig"
    sizes: dict = field(default_factory=dict)  # overrides of helpers.offline.TINY_SIZES
    text: Callable[[dict], dict] = lambda sizes: {}  # family-specific text_config fields, from the sizes
    vision: Callable[[dict], dict] = lambda sizes: {}  # family-specific vision_config fields


@dataclass(frozen=True, eq=False)  # one record per family: compared and hashed by identity
class Family:
    """One Qwen-VL family's conventions, classes and recipes."""

    model_type: str  # config.model_type
    name: str  # as the model cards write it
    processor_class: str  # transformers class names (looked up on demand: video processors need torchvision)
    video_processor_class: str
    patch_size: int  # vision patch side, px
    merge_size: int  # patches merged per side into one visual token
    coordinates: str  # NORM1000 or RESIZED_PX
    answer_syntax: str  # TAGS or JSON
    default_system_prompt: str | None  # what the official chat template inserts when the chat has no system turn
    tiny: TinyRecipe
    model_class: str  # what AutoModelForImageTextToText builds for this model_type
    lora_targets: dict[str, str] = field(default_factory=lambda: dict(DENSE_LORA_TARGETS))  # block -> module regex
    lora_parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # block -> parameter names (MoE experts)
    padding_free_refusal: str | None = None  # why packed batches are refused, or None when they are proven equal
    chat_template_kwargs: dict = field(default_factory=dict)  # options every chat is rendered with
    first_special_token_id: int = 151643  # <|endoftext|> in the real vocabulary (Qwen2's; Qwen3.5 has its own)

    def __repr__(self) -> str:
        return f"Family({self.model_type!r})"  # the record's name; its fields are in FAMILIES

    def __reduce__(self):
        return get_family, (self.model_type,)  # a pickled record (a data-loader worker's copy) is the registry's own

    @property
    def resize_factor(self) -> int:
        """Image sides after the processor's resize are multiples of this (patch * merge)."""
        return self.patch_size * self.merge_size

    @property
    def relative(self) -> bool:
        """True when boxes are written in 0..1000 of the image side."""
        return self.coordinates == NORM1000


def _qwen2_vl_vision(sizes: dict) -> dict:
    """Qwen2-VL's merger projects to vision_config.hidden_size, which must equal the text width."""
    return {"embed_dim": sizes["vision_hidden_size"], "hidden_size": sizes["hidden_size"], "mlp_ratio": 2, "patch_size": 14}


def _projected_vision(sizes: dict) -> dict:
    """Qwen2.5-VL and later have their own vision width and project it to the text width."""
    return {"hidden_size": sizes["vision_hidden_size"], "intermediate_size": 2 * sizes["vision_hidden_size"], "out_hidden_size": sizes["hidden_size"]}


def _qwen3_vl_vision(sizes: dict) -> dict:
    """Qwen3-VL's tower: patch 16, learned position embeddings, deepstack features (indexes below the depth)."""
    return _projected_vision(sizes) | {"patch_size": 16, "num_position_embeddings": 256, "deepstack_visual_indexes": [0]}


def _explicit_head_dim(sizes: dict) -> dict:
    """Qwen3 text models take head_dim explicitly."""
    return {"head_dim": sizes["hidden_size"] // sizes["num_attention_heads"]}


QWEN2_VL = Family(
    model_type="qwen2_vl", name="Qwen2-VL", processor_class="Qwen2VLProcessor", video_processor_class="Qwen2VLVideoProcessor",
    patch_size=14, merge_size=2, coordinates=NORM1000, answer_syntax=TAGS, default_system_prompt=QWEN_DEFAULT_SYSTEM_PROMPT,
    # Its 0..1000 boxes need three digits of precision where pixel boxes of about 112 px need two, hence a
    # third text layer in its tiny model (README, Does it learn?).
    tiny=TinyRecipe("Qwen2VLConfig", sizes={"num_hidden_layers": 3}, vision=_qwen2_vl_vision),
    model_class="Qwen2VLForConditionalGeneration",
)
QWEN2_5_VL = Family(
    model_type="qwen2_5_vl", name="Qwen2.5-VL", processor_class="Qwen2_5_VLProcessor", video_processor_class="Qwen2VLVideoProcessor",
    patch_size=14, merge_size=2, coordinates=RESIZED_PX, answer_syntax=JSON, default_system_prompt=QWEN_DEFAULT_SYSTEM_PROMPT,
    tiny=TinyRecipe("Qwen2_5_VLConfig", vision=lambda s: _projected_vision(s) | {"patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1]}),
    model_class="Qwen2_5_VLForConditionalGeneration",
)
QWEN3_VL = Family(
    model_type="qwen3_vl", name="Qwen3-VL", processor_class="Qwen3VLProcessor", video_processor_class="Qwen3VLVideoProcessor",
    patch_size=16, merge_size=2, coordinates=NORM1000, answer_syntax=JSON, default_system_prompt=None,
    tiny=TinyRecipe("Qwen3VLConfig", text=_explicit_head_dim, vision=_qwen3_vl_vision),
    model_class="Qwen3VLForConditionalGeneration",
)


def _tiny_experts(sizes: dict) -> dict:
    """A tiny mixture of experts: 4 experts, 2 routed per token, each a quarter of the dense MLP."""
    return {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": sizes["intermediate_size"] // 4}


def _hybrid_text(sizes: dict) -> dict:
    """Qwen3.5's text model: one Gated DeltaNet (linear attention) layer, then one full-attention layer."""
    # Full rotary on the 16-dim heads (the real models rotate a quarter of 256) so [2, 3, 3] covers all 8
    # frequencies, interleaved over (time, height, width) as Qwen3.5 always is.
    rope = {"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True, "partial_rotary_factor": 1.0}
    head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
    return _explicit_head_dim(sizes) | {
        "layer_types": ["linear_attention", "full_attention"],  # the default puts full attention every 4th layer only
        "linear_conv_kernel_dim": 4, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": head_dim, "linear_value_head_dim": head_dim, "rope_parameters": rope,
    }


def _qwen3_5_vision(sizes: dict) -> dict:
    """Qwen3-VL's tower without deepstack features."""
    return _projected_vision(sizes) | {"patch_size": 16, "num_position_embeddings": 256}


# Qwen3.5's Gated DeltaNet layers carry a recurrent and a convolution state from token to token; in a packed
# row that state flows from one sample into the next (measured: logits of the second sample off by up to
# 0.05 against it alone). transformers 5.24's torch fallback refuses sequence boundaries outright, and even
# flash-linear-attention's kernel gets none for the convolution.
LINEAR_ATTENTION_PACKING = "its Gated DeltaNet layers carry state across packed samples (no sequence boundaries reach them)"
QWEN3_5_COMMON = dict(
    processor_class="Qwen3VLProcessor", video_processor_class="Qwen3VLVideoProcessor", patch_size=16, merge_size=2,
    coordinates=NORM1000, answer_syntax=JSON, default_system_prompt=None,
    padding_free_refusal=LINEAR_ATTENTION_PACKING,
    # Detection answers carry no reasoning: the template then opens the answer with an empty think block,
    # which the generation prompt holds (<|im_start|>assistant\n<think>\n\n</think>\n\n).
    chat_template_kwargs={"enable_thinking": False},
    first_special_token_id=248044,  # Qwen3.5's own vocabulary (transformers' Qwen3_5Config image_token_id 248056)
)
QWEN3_5 = Family(
    model_type="qwen3_5", name="Qwen3.5", **QWEN3_5_COMMON,
    tiny=TinyRecipe("Qwen3_5Config", text=_hybrid_text, vision=_qwen3_5_vision),
    model_class="Qwen3_5ForConditionalGeneration",
    lora_targets=DENSE_LORA_TARGETS | {"language": HYBRID_LANGUAGE_LORA},
)
QWEN3_5_MOE = Family(
    model_type="qwen3_5_moe", name="Qwen3.5-MoE", **QWEN3_5_COMMON,
    # Every layer is a mixture of experts with a gated shared expert; the router stays frozen.
    tiny=TinyRecipe("Qwen3_5MoeConfig", text=lambda s: _hybrid_text(s) | _tiny_experts(s) | {"shared_expert_intermediate_size": s["intermediate_size"] // 2},
                    vision=_qwen3_5_vision),
    model_class="Qwen3_5MoeForConditionalGeneration",
    lora_targets=DENSE_LORA_TARGETS | {"language": HYBRID_LANGUAGE_LORA},
    lora_parameters={"experts": EXPERT_PARAMETERS},
)
QWEN3_VL_MOE = Family(
    model_type="qwen3_vl_moe", name="Qwen3-VL-MoE", processor_class="Qwen3VLProcessor", video_processor_class="Qwen3VLVideoProcessor",
    patch_size=16, merge_size=2, coordinates=NORM1000, answer_syntax=JSON, default_system_prompt=None,
    tiny=TinyRecipe("Qwen3VLMoeConfig", text=lambda s: _explicit_head_dim(s) | _tiny_experts(s) | {"decoder_sparse_step": 1}, vision=_qwen3_vl_vision),
    model_class="Qwen3VLMoeForConditionalGeneration",
    lora_parameters={"experts": EXPERT_PARAMETERS},
)

FAMILIES: dict[str, Family] = {
    family.model_type: family for family in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, QWEN3_VL_MOE, QWEN3_5, QWEN3_5_MOE)
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)  # the supported config.model_type values


def get_family(model_type: str) -> Family:
    """The record of a supported family; otherwise one clear error listing the supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"unknown family {model_type!r}: supported model_type values are {', '.join(FAMILY_NAMES)}")
    return FAMILIES[model_type]
