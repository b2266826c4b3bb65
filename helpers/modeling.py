"""Model loading (dtype, attention, quantisation), LoRA configuration and trainable-parameter summaries."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig
from transformers.utils import is_flash_attn_2_available

from helpers.distributed import is_distributed, local_rank
from helpers.families import get_family
from helpers.parameters import ATTENTION_CHOICES, QUANTIZATION_CHOICES
from helpers.processing import load_processor



def pick_device_and_dtype() -> tuple[str, torch.dtype]:
    """``("cuda", bf16)`` on a bf16-capable GPU, ``("cuda", fp16)`` on older GPUs, else ``("cpu", fp32)``.

    Under a launcher each process takes the GPU of its ``LOCAL_RANK``, ``cuda:<local rank>``, for the
    model, the 4-bit ``device_map`` and the inputs alike.
    """
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if not is_distributed():
            return "cuda", dtype
        torch.cuda.set_device(local_rank())  # NCCL and "cuda" tensors then default to this process's GPU
        return f"cuda:{local_rank()}", dtype
    return "cpu", torch.float32


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


def lora_config(family: str, targets: list[str], rank: int, alpha: int, dropout: float) -> LoraConfig:
    """A LoRA config on the chosen blocks of the family (its record's ``lora_targets`` and ``lora_parameters``)."""
    record = get_family(family)
    blocks = list(record.lora_targets) + list(record.lora_parameters)
    unknown = sorted(set(targets) - set(blocks))
    if unknown or not targets:
        raise ValueError(f"lora_targets={targets!r}; choose one or more of {sorted(blocks)} for {record.name}")
    pattern = "|".join(f"(?:{regex})" for name, regex in record.lora_targets.items() if name in targets)
    # MoE experts are fused 3-D parameters, which PEFT adapts by name rather than as Linear modules.
    parameters = [name for block, names in record.lora_parameters.items() if block in targets for name in names]
    if parameters and dropout:
        raise ValueError(f"lora_targets={targets!r} adapts fused expert weights, which PEFT does without dropout; set lora_dropout 0")
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern or None, target_parameters=parameters or None,
        bias="none", task_type="CAUSAL_LM",
    )


def wrap_lora(model, config: LoraConfig):
    """Wrap ``model`` with LoRA adapters (QLoRA preparation first when the model is quantised)."""
    if getattr(model, "is_quantized", False):
        # QLoRA: cast norms to fp32 and let gradients reach the adapters through frozen int weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # With frozen embeddings and activation checkpointing, no checkpointed input would require
    # grad and the adapters would get none; this hook makes the embedding output require it.
    model.enable_input_require_grads()
    return get_peft_model(model, config)


def parameter_block(name: str) -> str:
    """The top-level block a parameter belongs to: vision, merger, language model, lm_head or other."""
    if ".visual.merger." in f".{name}" or ".visual.deepstack_merger_list." in f".{name}":
        return "merger"
    if ".visual." in f".{name}":
        return "vision"
    if ".language_model." in f".{name}":
        return "language model"
    if ".lm_head." in f".{name}":
        return "lm_head"
    return "other"


def summarize_trainables(model, print_fn=print) -> list[dict]:
    """Trainable vs total parameters per top-level block (LoRA weights count in their block); prints a table."""
    blocks = ("vision", "merger", "language model", "lm_head", "other")
    rows = {block: {"block": block, "trainable": 0, "total": 0} for block in blocks}
    for name, parameter in model.named_parameters():
        row = rows[parameter_block(name)]
        row["total"] += parameter.numel()
        row["trainable"] += parameter.numel() if parameter.requires_grad else 0
    table = [row for row in rows.values() if row["total"]]
    table.append({"block": "all", "trainable": sum(r["trainable"] for r in table), "total": sum(r["total"] for r in table)})
    lines = [f"{'block':<16}{'trainable':>14}{'total':>14}{'trainable %':>13}"]
    lines += [f"{r['block']:<16}{r['trainable']:>14,}{r['total']:>14,}{100 * r['trainable'] / r['total']:>12.2f}%" for r in table]
    print_fn("\n".join(lines))
    return table


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
