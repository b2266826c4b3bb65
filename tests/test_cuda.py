"""What only a CUDA GPU can show: 4-bit QLoRA training, bf16 with activation checkpointing, padding-free
attention kernels, and the offline notebook on the GPU. Skipped without CUDA; `.ci/gpu_check` runs them on a CUDA machine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForImageTextToText
from transformers.utils import is_flash_attn_2_available

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.evaluate.metrics import MAP_50, MEAN_IOU, PARSE_FAILURE_RATE
from helpers.train.model import load_model_and_processor
from helpers.train.lora import lora_config, wrap_lora
from helpers.runtime.device import pick_device_and_dtype
from tests.support.notebook_cells import run_tagged_cells
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import get_family
from tests.cases import FAMILIES

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu_check)")]
CLASSES = ["red circle", "green square", "blue triangle"]


def chat_dataset(family: str, n: int, seed: int = 1):
    """``n`` synthetic detection examples with their chat columns."""
    return add_chat_columns(make_synthetic_dataset(n, seed=seed), family, detection_prompt(family, CLASSES), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_4bit_training_step_updates_the_adapters(tiny_checkpoints, family):
    _, dtype = pick_device_and_dtype()
    model, processor = load_model_and_processor(tiny_checkpoints[family], "4bit", "sdpa", dtype, "cuda", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert model.is_loaded_in_4bit and all(p.device.type == "cuda" for p in model.parameters())
    model = wrap_lora(model, lora_config(family, ["language"], 8, 16, 0.0))
    batch = run_tagged_cells("collators")["AssistantOnlyCollator"](processor)([chat_dataset(family, 4)[i] for i in range(4)]).to("cuda")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0


def test_bf16_training_with_activation_checkpointing(tiny_checkpoints, default_params, tmp_path):
    from tests.support.notebook_cells import notebook_sft_config
    from helpers.train.trainer import QwenVLSFTTrainer

    device, dtype = pick_device_and_dtype()
    assert dtype == torch.bfloat16, "an H100/H200-class GPU supports bf16"
    model, processor = load_model_and_processor(tiny_checkpoints["qwen2_5_vl"], "none", "sdpa", dtype, device, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    params = default_params | {"max_steps": 20, "logging_steps": 1, "eval_steps": 20, "save_steps": 100, "learning_rate": 1e-3}
    config = notebook_sft_config(params, tmp_path, device, dtype)
    assert config.bf16 and config.activation_checkpointing
    data = chat_dataset(get_family("qwen2_5_vl"), 64)
    trainer = QwenVLSFTTrainer(model=model, args=config, train_dataset=data, eval_dataset=data.select(range(8)),
                               data_collator=run_tagged_cells("collators")["AssistantOnlyCollator"](processor), processing_class=processor)
    trainer.train()
    assert model.is_activation_checkpointing
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_free_loss_equals_padded_loss_on_the_gpu(tiny_checkpoints, family):
    # flash-attention's variable-length kernel where flash-attn is installed, else sdpa: the kernels
    # that packing pays off with. bf16 sums in another order, so the match is to bf16 precision.
    attention = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    cells = run_tagged_cells("collators")
    _, processor = load_model_and_processor(tiny_checkpoints[family], "none", "sdpa", torch.float32, "cpu", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family], attn_implementation=attention, dtype=torch.bfloat16).cuda().eval()
    examples = [chat_dataset(family, 3, seed=5)[i] for i in range(3)]
    padded = cells["AssistantOnlyCollator"](processor)(examples).to("cuda")
    packed = {key: value.to("cuda") for key, value in cells["PaddingFreeCollator"](processor, model.model.get_rope_index)(examples).items()}
    with torch.no_grad():
        padded_loss = float(model(**padded, use_cache=False).loss)
        packed_loss = float(model(**packed, use_cache=False).loss)
    print(f"{family} {attention}: padded {padded_loss:.5f}, packed {packed_loss:.5f}")
    assert packed_loss == pytest.approx(padded_loss, rel=2e-2)


@pytest.mark.slow
def test_offline_notebook_runs_on_the_gpu(tmp_path, run_notebook):
    result = run_notebook(tmp_path, "run_name=gpu", "max_steps=20", "eval_steps=10", "save_steps=10")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    environment = json.loads((tmp_path / "gpu" / "params.json").read_text())["environment"]
    assert environment["device"] == "cuda" and environment["dtype"] == "bfloat16"
    metrics = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert metrics["train"]["gpu_peak_allocated_gib"] > 0
    print("gpu notebook:", {k: metrics["finetuned"][k] for k in (MAP_50, MEAN_IOU, PARSE_FAILURE_RATE)}, metrics["train"])
