"""Model loading (dtype, attention, quantisation) and LoRA wrapping for Qwen-VL checkpoints."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig
from transformers.utils import is_flash_attn_2_available

QUANTIZATION_CHOICES = ("none", "8bit", "4bit")
ATTENTION_CHOICES = ("sdpa", "eager", "flash_attention_2")
# The language model's attention and MLP projections only: a plain `q_proj` target would also
# hit vision-tower layers in some families (shared/ENVIRONMENT.md), so anchor on `language_model`.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def pick_device_and_dtype() -> tuple[str, torch.dtype]:
    """``("cuda", bf16)`` on a bf16-capable GPU, ``("cuda", fp16)`` on older GPUs, else ``("cpu", fp32)``."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes config for ``none | 8bit | 4bit``; vision tower and lm_head stay unquantised."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization={quantization!r}; expected one of {QUANTIZATION_CHOICES}")
    if quantization == "none":
        return None
    # Names match from the start of the module path (transformers' should_convert_module), so the
    # vision tower is "model.visual", not "visual". Narrow vision layers break 4-bit kernels on
    # CPU (shared/ENVIRONMENT.md) and the head stays exact.
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


def wrap_lora(model, rank: int, alpha: int, dropout: float):
    """Wrap ``model`` with LoRA adapters on the language model's projections."""
    if getattr(model, "is_quantized", False):
        # QLoRA: cast norms to fp32 and let gradients reach the adapters through frozen int weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # With frozen embeddings and activation checkpointing, no checkpointed input would require
    # grad and the adapters would get none; this hook makes the embedding output require it.
    model.enable_input_require_grads()
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LANGUAGE_LORA_TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
