"""Model loading choices and LoRA targeting."""

from __future__ import annotations

import json

import pytest
import torch

from pathlib import Path

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.train.lora import count_parameters, lora_config, parameter_block, summarize_trainables, wrap_lora
from helpers.train.model import load_model, load_model_and_processor, quantization_config, weights_dtype
from helpers.runtime.device import pick_device_and_dtype
from helpers.families.registry import get_family
from tests.cases import FAMILIES


@pytest.mark.parametrize(
    "compute,use_lora,expected",
    [(torch.float16, False, torch.float32), (torch.float16, True, torch.float16), (torch.bfloat16, False, torch.bfloat16),
     (torch.float32, False, torch.float32)],
)
def test_weights_dtype_suits_mixed_precision(compute, use_lora, expected):
    assert weights_dtype(compute, use_lora) == expected


def test_cpu_device_and_dtype():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU choice is what CI checks")
    assert pick_device_and_dtype() == ("cpu", torch.float32)


UNQUANTISED = {"model.visual", "lm_head"}  # the vision tower and the head stay exact


def test_no_quantization_and_unknown_choices():
    assert quantization_config("none", torch.float32) is None
    with pytest.raises(ValueError, match="quantization='3bit'; expected one of"):
        quantization_config("3bit", torch.float32)


def test_8bit_config_skips_the_vision_tower_and_head():
    config = quantization_config("8bit", torch.float32)
    assert config.load_in_8bit and not config.load_in_4bit and set(config.llm_int8_skip_modules) == UNQUANTISED


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "no-cuda"])
def test_4bit_config_is_nf4_with_double_quantisation_on_cuda_and_refused_without(monkeypatch, cuda):
    # Whether CUDA is there is set here, so both branches run on every machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if not cuda:
        with pytest.raises(ValueError, match="'4bit' needs a CUDA GPU"):
            quantization_config("4bit", torch.bfloat16)
        return
    config = quantization_config("4bit", torch.bfloat16)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and set(config.llm_int8_skip_modules) == UNQUANTISED


def test_missing_flash_attention_is_a_clear_error(tiny_checkpoints):
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match="flash-attn is not installed"):
        load_model(tiny_checkpoints["qwen2_vl"], "none", "flash_attention_2", torch.float32, "cpu")


DENSE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
LINEAR_ATTENTION = {"in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj"}  # Qwen3.5's Gated DeltaNet
LANGUAGE_PROJECTIONS = {  # what the "language" block adapts, per family
    "qwen2_vl": DENSE, "qwen2_5_vl": DENSE, "qwen3_vl": DENSE,
    "qwen3_vl_moe": {"q_proj", "k_proj", "v_proj", "o_proj"},  # every MLP is a mixture of experts: the "experts" block
    "qwen3_5": DENSE | LINEAR_ATTENTION,
    "qwen3_5_moe": DENSE | LINEAR_ATTENTION,  # gate/up/down_proj of the shared expert; the experts are their own block
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_hits_only_language_model_projections(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu")
    total_before = count_parameters(model)[1]
    model = wrap_lora(model, lora_config(family, ["language"], rank=4, alpha=8, dropout=0.0))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in name and "lora_" in name for name in trainable)
    projections = {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable}
    assert projections == LANGUAGE_PROJECTIONS[family.model_type]
    n_trainable, total = count_parameters(model)
    assert total > total_before and n_trainable == total - total_before


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("targets", [["vision"], ["merger"], ["language", "merger"], ["language", "vision", "merger"]])
def test_lora_targets_cover_exactly_the_chosen_blocks(tiny_checkpoints, family, targets):
    model = load_model(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu")
    linear_blocks = {  # every Linear layer but the routing gates of a mixture of experts, which stay frozen
        name: parameter_block(name + ".weight") for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("shared_expert_gate")
    }
    expected = {name for name, block in linear_blocks.items() if block in {t.replace("language", "language model") for t in targets}}
    model = wrap_lora(model, lora_config(family, targets, rank=2, alpha=4, dropout=0.0))
    adapted = {name.removeprefix("base_model.model.") for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == expected


# The multi-token-prediction head of the Qwen3.5-architecture checkpoints (Qwen3.5, 3.6, 3.8), as their safetensors name it.
MTP_WEIGHTS = [
    "mtp.fc.weight", "mtp.norm.weight", "mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight",
    "mtp.layers.0.input_layernorm.weight", "mtp.layers.0.post_attention_layernorm.weight",
    "mtp.layers.0.self_attn.q_proj.weight", "mtp.layers.0.self_attn.k_proj.weight", "mtp.layers.0.self_attn.v_proj.weight",
    "mtp.layers.0.self_attn.o_proj.weight", "mtp.layers.0.self_attn.q_norm.weight", "mtp.layers.0.self_attn.k_norm.weight",
    "mtp.layers.0.mlp.gate_proj.weight", "mtp.layers.0.mlp.up_proj.weight", "mtp.layers.0.mlp.down_proj.weight",
]


@pytest.mark.parametrize("family", [get_family("qwen3_5"), get_family("qwen3_5_moe")])
def test_lora_never_reaches_the_multi_token_prediction_head(tiny_checkpoints, family, tmp_path):
    import re
    import shutil

    from safetensors.torch import load_file, save_file

    # A tiny checkpoint laid out as the published ones: mtp_num_hidden_layers 1 and mtp.* weights beside the model's.
    folder = Path(shutil.copytree(tiny_checkpoints[family], tmp_path / "with_mtp"))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["mtp_num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    width = config["text_config"]["hidden_size"]
    save_file(weights | {name: torch.ones(width, width) for name in MTP_WEIGHTS}, folder / "model.safetensors", metadata={"format": "pt"})

    # transformers builds no MTP head and drops its weights on load, so nothing named mtp can be adapted.
    model = load_model(folder, "none", "sdpa", torch.float32, "cpu")
    assert model.config.text_config.mtp_num_hidden_layers == 1
    assert not [name for name, _ in model.named_parameters() if "mtp" in name]
    config = lora_config(family, list(family.lora_targets) + list(family.lora_parameters), rank=2, alpha=4, dropout=0.0)
    model = wrap_lora(model, config)
    adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    assert adapted and not [name for name in adapted if "mtp" in name]
    # Should a later transformers build it, at the top or inside the language model, the targets still skip it.
    for name in MTP_WEIGHTS:
        module = name.removesuffix(".weight")
        assert not re.fullmatch(config.target_modules, module)
        assert not re.fullmatch(config.target_modules, f"model.language_model.{module}")
    assert re.fullmatch(config.target_modules, "model.language_model.layers.0.self_attn.q_proj")


@pytest.mark.parametrize("targets", [[], ["decoder"], ["language", "everything"]])
def test_lora_config_rejects_unknown_targets(targets):
    with pytest.raises(ValueError, match="choose one or more of"):
        lora_config(get_family("qwen2_vl"), targets, 4, 8, 0.0)


@pytest.mark.parametrize(
    "name,block",
    [
        ("model.visual.blocks.0.attn.qkv.weight", "vision"),
        ("model.visual.merger.mlp.0.weight", "merger"),
        ("model.visual.deepstack_merger_list.1.linear_fc1.bias", "merger"),
        ("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight", "language model"),
        ("model.language_model.embed_tokens.weight", "language model"),
        ("lm_head.weight", "lm_head"),
        ("something_else.weight", "other"),
    ],
)
def test_parameter_block(name, block):
    assert parameter_block(name) == block


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("use_lora", [False, True])
def test_summarize_trainables_adds_up(tiny_checkpoints, family, use_lora):
    model = load_model(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu")
    if use_lora:
        model = wrap_lora(model, lora_config(family, ["language"], rank=2, alpha=4, dropout=0.0))
    printed = []
    table = summarize_trainables(model, print_fn=printed.append)
    rows = {row["block"]: row for row in table}
    trainable, total = count_parameters(model)
    assert rows["all"] == {"block": "all", "trainable": trainable, "total": total}
    assert {"vision", "merger", "language model", "lm_head"} <= set(rows)
    if use_lora:
        assert rows["language model"]["trainable"] == trainable and rows["vision"]["trainable"] == 0
    else:
        assert all(row["trainable"] == row["total"] for row in table)
    assert "trainable %" in printed[0]


def test_model_and_processor_load_together(tiny_checkpoints):
    model, processor = load_model_and_processor(
        tiny_checkpoints["qwen2_5_vl"], "none", "sdpa", torch.float32, "cpu", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS
    )
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"  # chosen from config.model_type
    assert processor.image_processor.size == {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}
    assert model.config._attn_implementation == "sdpa"


def test_no_remote_code_anywhere():
    root = Path(__file__).resolve().parent.parent
    sources = [*root.glob("helpers/*.py"), root / "fine_tuning_vlm_for_object_detection_trl.py"]
    assert not [p.name for p in sources if "trust_remote_code=True" in p.read_text()]


def test_8bit_model_loads_on_cpu(tiny_checkpoints):
    model = load_model(tiny_checkpoints["qwen2_vl"], "8bit", "sdpa", torch.float32, "cpu")
    assert getattr(model, "is_quantized", False)
    assert model.model.visual.blocks[0].attn.qkv.weight.dtype == torch.float32  # vision tower kept unquantised


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.lora_parameters])
def test_lora_on_the_experts_of_a_mixture_trains_them(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu")
    model = wrap_lora(model, lora_config(family, ["experts"], rank=2, alpha=4, dropout=0.0))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.experts." in name and "lora_" in name for name in trainable)
    for name, parameter in trainable.items():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)  # B starts at 0, which would leave A without a gradient
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


def test_experts_refuse_dropout_up_front():
    with pytest.raises(ValueError, match="adapts fused expert weights, which PEFT does without dropout; set lora_dropout 0"):
        lora_config(get_family("qwen3_5_moe"), ["language", "experts"], 4, 8, 0.05)


@pytest.mark.parametrize("family", [f for f in FAMILIES if not f.lora_parameters])
def test_dense_families_have_no_experts_block(family):
    with pytest.raises(ValueError, match="choose one or more of"):
        lora_config(family, ["experts"], 4, 8, 0.0)
