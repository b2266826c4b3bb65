"""The training configuration's settings that depend on the machine, the arithmetic of its step counts, and the schedules offered.

Nothing here imports TRL: the parameter rules read ``SCHEDULES`` before any model library loads.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch

from helpers.evaluate.metrics import EVAL_LOSS, EVAL_MEAN_IOU
from helpers.runtime.distributed import is_distributed, local_world_size, weights_are_sharded_by_fsdp

if TYPE_CHECKING:
    from trl import SFTConfig

SCHEDULES = ("cosine", "linear", "constant_with_warmup")  # the learning-rate schedules offered (transformers' names)
# What the run keeps in model/: the final weights, or the checkpoint best by a metric of the evaluations
# (its log key, and whether higher is better).
KEEP_CHECKPOINT: dict[str, tuple[str, bool] | None] = {"last": None, "best_eval_loss": (EVAL_LOSS, False), "best_eval_iou": (EVAL_MEAN_IOU, True)}
KEEP_CHOICES = tuple(KEEP_CHECKPOINT)
GPU_WORKERS = 4  # data-loader workers a GPU process needs at the GPU presets (benchmarks/data_path.py, docs/speed.md)


def best_checkpoint_problem(keep_checkpoint: str, save_steps: int, eval_steps: int, iou_eval_images: int) -> str | None:
    """Why keeping the best checkpoint cannot work with these settings (None when it can, or when the last is kept)."""
    if KEEP_CHECKPOINT[keep_checkpoint] is None:
        return None
    if save_steps % eval_steps:
        return (f"keep_checkpoint={keep_checkpoint!r} compares checkpoints at evaluations: save_steps={save_steps} must be a multiple "
                f"of eval_steps={eval_steps} (set save_steps to {eval_steps * max(1, round(save_steps / eval_steps))})")
    if keep_checkpoint == "best_eval_iou" and iou_eval_images < 1:
        return "keep_checkpoint='best_eval_iou' needs the IoU at each evaluation: set iou_eval_images to 1 or more"
    return None


def best_model_settings(keep_checkpoint: str) -> dict:
    """The ``SFTConfig`` fields that keep the best checkpoint by ``keep_checkpoint`` (none for "last")."""
    rule = KEEP_CHECKPOINT[keep_checkpoint]
    if rule is None:
        return {"load_best_model_at_end": False}
    metric, higher_is_better = rule
    return {"load_best_model_at_end": True, "metric_for_best_model": metric, "greater_is_better": higher_is_better}


def kept_checkpoint(state, keep_checkpoint: str) -> dict:
    """Which weights model/ holds: the step, and for a best checkpoint its metric and value (for metrics.json)."""
    if KEEP_CHECKPOINT[keep_checkpoint] is None or state.best_model_checkpoint is None:
        return {"rule": "last", "step": state.global_step}
    step = int(state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[-1])
    return {"rule": keep_checkpoint, "step": step, "metric": KEEP_CHECKPOINT[keep_checkpoint][0], "value": state.best_metric}


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


def default_workers(device: str, cpu_count: int | None = None) -> int:
    """Data-loader workers per training process when ``dataloader_num_workers`` is -1 (benchmarks/data_path.py measured why)."""
    if not device.startswith("cuda"):
        return 0  # the CPU step already uses every core: a worker only competes with it
    cores = (cpu_count or os.cpu_count() or 1) // max(local_world_size(), 1)
    return max(0, min(GPU_WORKERS, cores - 1))  # one core stays with the process that drives the GPU


def data_loader_settings(num_workers: int, device: str) -> dict:
    """The ``SFTConfig`` data-loader fields: ``num_workers`` worker processes (-1: the device's default), kept alive and prefetching."""
    workers = default_workers(device) if num_workers == -1 else num_workers
    return {
        "dataloader_num_workers": workers,
        "dataloader_persistent_workers": workers > 0,  # workers start once, not at every epoch and evaluation
        "dataloader_prefetch_factor": 2 if workers > 0 else None,  # batches each worker prepares ahead
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
