"""TRL training configuration from the notebook parameters, its printed arithmetic, and resuming."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import torch
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFE_WEIGHTS_NAME
from transformers.trainer import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import SFTConfig, SFTTrainer

from helpers.distributed import is_distributed, weights_are_sharded_by_fsdp
from helpers.parameters import expand_path


def device_defaults(device: str, dtype: torch.dtype) -> dict:
    """Precision, pinned memory and activation checkpointing that suit the device."""
    on_gpu = device.startswith("cuda")
    return {
        "bf16": on_gpu and dtype == torch.bfloat16,  # bf16=True on CPU is an error in this stack
        "fp16": on_gpu and dtype == torch.float16,
        "dataloader_pin_memory": on_gpu,  # pinning needs CUDA
        # Trades compute for memory; on CPU memory is not the limit. Under FSDP the engine checkpoints
        # (configs/fsdp2.yaml) and the Trainer refuses to do it a second time.
        "activation_checkpointing": on_gpu and not weights_are_sharded_by_fsdp(),
        # Several CPU processes under a launcher: without use_cpu the Trainer starts no process group and
        # each process trains alone (measured with torchrun); with it, DDP over gloo. One process: unchanged.
        **({"use_cpu": True} if device == "cpu" and is_distributed() else {}),
    }


def training_arithmetic(config: SFTConfig, n_train_examples: int) -> dict:
    """Effective batch, optimizer steps, warm-up steps and epochs implied by ``config``."""
    processes = config.world_size
    effective_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * processes
    batches_per_epoch = math.ceil(n_train_examples / (config.per_device_train_batch_size * processes))
    steps_per_epoch = max(math.ceil(batches_per_epoch / config.gradient_accumulation_steps), 1)  # the trainer rounds up
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)
    return {
        "processes": processes,
        "effective_batch": effective_batch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": config.get_warmup_steps(total_steps),
        "epochs": total_steps * effective_batch / n_train_examples,
    }


def print_training_config(config: SFTConfig, n_train_examples: int, print_fn=print) -> dict:
    """Print the settings that matter, with the arithmetic behind the step counts; return the arithmetic."""
    a = training_arithmetic(config, n_train_examples)
    precision = "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32"
    source = "max_steps" if config.max_steps > 0 else f"{config.num_train_epochs} epochs"
    lines = [
        f"effective batch   {a['effective_batch']} = {config.per_device_train_batch_size} per device"
        f" x {config.gradient_accumulation_steps} accumulation x {a['processes']} process(es)",
        f"optimizer steps   {a['total_steps']} ({source}); {a['steps_per_epoch']} per epoch of {n_train_examples}"
        f" training images, so {a['epochs']:.2f} epochs",
        f"learning rate     {config.learning_rate:g}, {a['warmup_steps']} warm-up steps then {getattr(config.lr_scheduler_type, 'value', config.lr_scheduler_type)}"
        f"; weight decay {config.weight_decay:g}; "
        + (f"gradients clipped to norm {config.max_grad_norm:g}" if config.max_grad_norm > 0 else "no gradient clipping"),
        f"precision         {precision}; activation checkpointing {'on' if config.activation_checkpointing else 'off'}"
        f"; pin memory {'on' if config.dataloader_pin_memory else 'off'}; seed {config.seed}",
        f"cadence           log every {config.logging_steps}, eval every {config.eval_steps}, save every {config.save_steps}"
        f" (keep {config.save_total_limit}) to {config.output_dir}",
        f"reporting         {', '.join(config.report_to) or 'none'}",
    ]
    print_fn("\n".join(lines))
    return a


def _safetensors_complete(path: Path) -> bool:
    """True when a safetensors file holds every byte its header promises (a truncated one does not)."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data_end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    return path.stat().st_size >= 8 + header_len + data_end


def _file_problem(path: Path) -> str | None:
    """Why one checkpoint file cannot be read back (missing, truncated, unparseable), or None."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        if path.suffix in (".pt", ".pth"):  # torch.save writes a zip archive; a cut one has no central directory
            ok = zipfile.is_zipfile(path)
        elif path.suffix == ".safetensors":
            ok = _safetensors_complete(path)
        else:
            json.loads(path.read_text())
            ok = True
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"{path.name} is truncated or unreadable"


def checkpoint_problems(folder: str | Path) -> list[str]:
    """Why a checkpoint cannot be resumed from (empty when it can): its state, weights, optimizer, schedule and RNG state must all read back.

    Without ``optimizer.pt`` or ``scheduler.pt`` the trainer would resume with a fresh optimizer and
    learning-rate schedule and say nothing.
    """
    folder = Path(folder)
    weights = next((folder / name for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, ADAPTER_SAFE_WEIGHTS_NAME) if (folder / name).is_file()), None)
    files = [folder / "trainer_state.json", folder / "optimizer.pt", folder / "scheduler.pt"]
    problems = [problem for problem in map(_file_problem, files) if problem]
    if weights is None:
        problems.append("no model weights (model.safetensors, its index, or adapter_model.safetensors)")
    else:
        shards = [weights]
        if weights.name == SAFE_WEIGHTS_INDEX_NAME and not _file_problem(weights):
            shards += [folder / name for name in sorted(set(json.loads(weights.read_text())["weight_map"].values()))]
        problems += [problem for problem in map(_file_problem, shards) if problem]
    rng_states = sorted(folder.glob("rng_state*.pth"))
    problems += [problem for problem in map(_file_problem, rng_states) if problem] if rng_states else ["rng_state.pth is missing"]
    return problems


def latest_complete_checkpoint(checkpoints_dir: str | Path, print_fn=print) -> Path | None:
    """The newest ``checkpoint-N`` folder that ``checkpoint_problems`` finds sound; each newer one skipped is printed with why."""
    folders = [p for p in Path(checkpoints_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problems = checkpoint_problems(folder)
        if not problems:
            return folder
        print_fn(f"resume: skipping {folder.name}: {'; '.join(problems)}")
    return None


def resolve_resume(resume_from_checkpoint: bool | str, checkpoints_dir: str | Path, print_fn=print) -> str | None:
    """The checkpoint to resume from: None (start fresh), the newest sound one (``True``), or the given path once checked."""
    if resume_from_checkpoint is False or resume_from_checkpoint == "":
        return None
    if resume_from_checkpoint is True:
        latest = latest_complete_checkpoint(checkpoints_dir, print_fn)
        if latest is None:
            raise ValueError(f"resume_from_checkpoint=True but {checkpoints_dir} holds no complete checkpoint-* folder")
        return str(latest)
    folder = expand_path(resume_from_checkpoint)
    problems = checkpoint_problems(folder)
    if problems:
        raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint!r} cannot be resumed from: {'; '.join(problems)}")
    return str(folder)


class QwenVLSFTTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with two Qwen-VL fixes: resume restores full-model weights, and padding-free token counts.

    Resume: ``save_pretrained`` writes Qwen-VL weights in the original hub layout (``model.layers``,
    ``visual``), while the loaded model names them ``model.language_model`` / ``model.visual``.
    transformers 5.24's resume loads the file with ``load_state_dict(strict=False)`` on the raw
    keys, so nothing matches and training silently restarts from the initial weights with the
    restored optimizer state (huggingface/transformers#43701). Loading the checkpoint through
    ``from_pretrained`` applies the key conversion; LoRA checkpoints take the trainer's own path.

    Token count: without an attention mask TRL counts a batch's tokens as ``position_ids.size(1)``,
    which for Qwen-VL's (4, 1, L) packed positions is 1; the logged ``num_tokens`` gets the rest.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packed = "attention_mask" not in inputs and inputs.get("position_ids") is not None and inputs["position_ids"].dim() == 3
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if packed and model.training:
            missing = inputs["input_ids"].numel() - inputs["position_ids"].size(1)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.tensor(missing, device=inputs["input_ids"].device)).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        has_full_weights = (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()
        if hasattr(model, "peft_config") or not has_full_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(str(folder), dtype=dtype, use_safetensors=True)  # converts the keys
        model.load_state_dict(saved.state_dict(), strict=True)  # every weight, or an error
        del saved
