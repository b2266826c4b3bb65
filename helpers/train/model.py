"""Model loading: the class from the config, weights from safetensors, dtype, attention and bitsandbytes quantisation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig
from transformers.utils import is_flash_attn_2_available

from helpers.families.processors import load_processor

QUANTIZATION_CHOICES = ("none", "8bit", "4bit")  # bitsandbytes: none, int8, or NF4 (QLoRA, CUDA only)
ATTENTION_CHOICES = ("sdpa", "eager", "flash_attention_2")  # transformers' attn_implementation values offered


def weights_dtype(compute_dtype: torch.dtype, use_lora: bool) -> torch.dtype:
    """The dtype to load weights in: fp16 mixed precision needs fp32 trainable weights, so full fine-tuning loads fp32."""
    if compute_dtype == torch.float16 and not use_lora:
        return torch.float32  # AMP's grad scaler refuses to unscale fp16 gradients; LoRA adapters are fp32 anyway
    return compute_dtype


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes config for ``none | 8bit | 4bit``; vision tower and lm_head stay unquantised."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization={quantization!r}; expected one of {QUANTIZATION_CHOICES}")
    if quantization == "none":
        return None
    # Names match from the start of the module path (transformers' should_convert_module), so the
    # vision tower is "model.visual", not "visual". Layers narrower than 64 break bitsandbytes' 4-bit
    # forward on CPU (measured with bitsandbytes 0.50.2), and the head stays exact.
    skip = ["model.visual", "lm_head"]
    if quantization == "4bit":
        if not torch.cuda.is_available():
            raise ValueError(
                "quantization='4bit' needs a CUDA GPU: bitsandbytes 4-bit training breaks on CPU. "
                "Use quantization='8bit' or 'none' here."
            )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_model(model_id_or_path: str, quantization: str, attn_implementation: str, dtype: torch.dtype, device: str):
    """Load a Qwen-VL model (class chosen from its config) from safetensors, no remote code."""
    if attn_implementation not in ATTENTION_CHOICES:
        raise ValueError(f"attn_implementation={attn_implementation!r}; expected one of {ATTENTION_CHOICES}")
    if attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise ValueError(
            "attn_implementation='flash_attention_2' but flash-attn is not installed (or there is no CUDA GPU); "
            "`pip install flash-attn` on a GPU machine, or use 'sdpa'."
        )
    bnb_config = quantization_config(quantization, dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        model_id_or_path,
        dtype=dtype,
        attn_implementation=attn_implementation,
        quantization_config=bnb_config,
        device_map={"": device} if bnb_config is not None else None,
        use_safetensors=True,
    )
    if bnb_config is None:
        model.to(device)
    return model


def load_model_and_processor(
    model_id_or_path: str | Path,
    quantization: str,
    attn_implementation: str,
    dtype: torch.dtype,
    device: str,
    min_pixels: int,
    max_pixels: int,
):
    """Load a Qwen-VL model and its processor (resolution bounds applied) from a hub id or local path."""
    processor = load_processor(model_id_or_path, min_pixels, max_pixels)
    return load_model(str(model_id_or_path), quantization, attn_implementation, dtype, device), processor
