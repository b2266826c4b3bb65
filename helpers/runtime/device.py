"""The device and dtype a process computes with, its report, memory clean-up and peak-memory report; harmless on CPU."""

from __future__ import annotations

import gc
import resource
import sys

import torch

from helpers.runtime.distributed import is_distributed, local_rank


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


def device_report(device: str, dtype: torch.dtype) -> dict:
    """Device, dtype and, on CUDA, the GPU's name, memory and bf16 support."""
    report = {"device": device, "dtype": str(dtype).removeprefix("torch."), "cpu_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())  # this process's GPU under a launcher
        report |= {
            "gpu": properties.name,
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return report


def clear_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver (after deleting a model)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_model(model) -> None:
    """Free a model's weights now, even while other names (a trainer, a collator) still refer to it, and return the memory."""
    try:
        model.to_empty(device="meta")  # every parameter and buffer becomes a shapeless meta tensor
    except (RuntimeError, TypeError, NotImplementedError):  # a quantised tensor subclass may refuse; collection still helps
        pass
    clear_memory()


def reset_peak_memory() -> None:
    """Start a new peak-memory measurement on CUDA (the CPU figure is the process's lifetime peak)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_report() -> dict:
    """Peak GPU memory allocated and reserved (GiB) on CUDA; the process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return {
            "gpu_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "gpu_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        }
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"cpu_peak_rss_gib": round(max_rss / (2**30 if sys.platform == "darwin" else 2**20), 2)}
