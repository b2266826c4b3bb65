"""Model loading choices and LoRA targeting."""

from __future__ import annotations

import pytest
import torch

from helpers.modeling import count_parameters, load_model, pick_device_and_dtype, quantization_config, wrap_lora


def test_cpu_device_and_dtype():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU choice is what CI checks")
    assert pick_device_and_dtype() == ("cpu", torch.float32)


@pytest.mark.parametrize(
    "quantization,expect",
    [("none", None), ("8bit", "load_in_8bit"), ("4bit", "4bit-needs-cuda"), ("3bit", "bad")],
)
def test_quantization_config(quantization, expect):
    if expect == "bad":
        with pytest.raises(ValueError, match="quantization='3bit'; expected one of"):
            quantization_config(quantization, torch.float32)
    elif expect == "4bit-needs-cuda" and not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'4bit' needs a CUDA GPU"):
            quantization_config(quantization, torch.float32)
    elif expect is None:
        assert quantization_config(quantization, torch.float32) is None
    else:
        config = quantization_config(quantization, torch.float32)
        assert config.load_in_8bit and set(config.llm_int8_skip_modules) == {"model.visual", "lm_head"}


def test_missing_flash_attention_is_a_clear_error(tiny_checkpoints):
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match="flash-attn is not installed"):
        load_model(tiny_checkpoints["qwen2_vl"], "none", "flash_attention_2", torch.float32, "cpu")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_lora_hits_only_language_model_projections(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu")
    total_before = count_parameters(model)[1]
    model = wrap_lora(model, rank=4, alpha=8, dropout=0.0)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in name and "lora_" in name for name in trainable)
    projections = {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    n_trainable, total = count_parameters(model)
    assert total > total_before and n_trainable == total - total_before


def test_8bit_model_loads_on_cpu(tiny_checkpoints):
    model = load_model(tiny_checkpoints["qwen2_vl"], "8bit", "sdpa", torch.float32, "cpu")
    assert getattr(model, "is_quantized", False)
    assert model.model.visual.blocks[0].attn.qkv.weight.dtype == torch.float32  # vision tower kept unquantised
