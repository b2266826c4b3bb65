"""Export and reuse: merge a saved LoRA adapter into its base, and load a run's model fresh."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText
from transformers.utils import logging as transformers_logging

from helpers.runtime.distributed import is_main_process
from helpers.train.model import load_model
from helpers.families.processors import load_saved_processor, read_family


def merge_refusal(quantization: str, use_lora: bool) -> str | None:
    """Why a merged model cannot be written for this run, or None when it can."""
    if not use_lora:
        return "nothing to merge: the run fine-tuned the full model, which model/ already holds"
    if quantization != "none":
        return (
            f"not merging into a {quantization} base: adding the adapter to quantised weights rounds it away. "
            "Reload the base in bf16 on a GPU, attach model/ with PeftModel.from_pretrained, and merge there "
            "(the result differs slightly from the quantised base + adapter the run evaluated)"
        )
    return None


def save_trained_model(trainer, processor, out_dir: str | Path) -> Path:
    """Save the trained weights (the adapter alone with LoRA) and the processor to ``out_dir``, quietly.

    Every rank takes part in ``trainer.save_model`` (FSDP and ZeRO-3 gather the sharded weights there);
    the processor, the same on every rank, is saved by the main process.
    """
    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a "Writing model shards" bar per save says nothing a reader can act on
    try:
        trainer.save_model(str(out_dir))
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()
    if is_main_process():
        processor.save_pretrained(str(out_dir))
    return Path(out_dir)


def merge_adapter_into_base(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype) -> Path:
    """Load the base fresh, apply the adapter, merge it in, and save model + processor to ``out_dir`` (the main process only)."""
    out_dir = Path(out_dir)
    if not is_main_process():
        return out_dir
    base = AutoModelForImageTextToText.from_pretrained(str(base_model), dtype=dtype, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    load_saved_processor(adapter_dir, read_family(base_model)).save_pretrained(out_dir)  # the run saved it next to the adapter
    return out_dir


def load_trained_model(
    model_dir: str | Path, base_model: str | Path, quantization: str, attn_implementation: str, dtype: torch.dtype, device: str
):
    """Load a run's ``model/`` (full weights, or an adapter on ``base_model``) and its processor, for inference."""
    model_dir = Path(model_dir)
    family = read_family(base_model)
    if (model_dir / "adapter_config.json").is_file():
        base = load_model(str(base_model), quantization, attn_implementation, dtype, device)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = load_model(str(model_dir), quantization, attn_implementation, dtype, device)
    return model.eval(), load_saved_processor(model_dir, family)
