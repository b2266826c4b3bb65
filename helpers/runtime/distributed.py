"""Rank awareness for runs under ``accelerate launch`` or ``torchrun``; a no-op in a single process.

Rank, local rank and world size come from the launcher's environment (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``), so the same notebook code runs under papermill (one process: rank 0 of 1) and under
a launcher. Only the main process writes run-folder files, prints and draws; the others compute.
The process group is started early (``start_process_group``), before anything needs a barrier, by
accelerate's ``PartialState``, which the Trainer then reuses: gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Iterator, Sequence

import torch


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine, which picks its GPU (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """How many processes train on this machine (1 without a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the one process that writes files and prints."""
    return rank() == 0


def is_distributed() -> bool:
    """True under a launcher with more than one process."""
    return world_size() > 1


def start_process_group(device: str) -> None:
    """Start the process group now (gloo on CPU, NCCL on GPUs) so barriers work before the Trainer exists; one process: nothing."""
    if not is_distributed():
        return
    from accelerate import PartialState  # the Trainer reuses this shared state

    PartialState(cpu=device == "cpu")


def barrier() -> None:
    """Wait until every process reaches this point (no-op in one process)."""
    if is_distributed() and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others: what it builds is built once, then read."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def quiet_unless_main() -> None:
    """Silence this process's console output unless it is the main one, so each line prints once."""
    if is_main_process():
        return
    sys.stdout = io.TextIOWrapper(open(os.devnull, "wb"), write_through=True)  # noqa: SIM115 (lives as long as the process)
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it for every new bar
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def shard_indices(n_items: int) -> list[int]:
    """The items this rank evaluates: every ``world_size``-th from its rank, padded with the last item so every rank runs as many batches."""
    mine = list(range(rank(), n_items, world_size()))
    per_rank = -(-n_items // world_size())  # ceil: ranks must run the same number of generate() calls under FSDP and ZeRO-3
    return mine + [n_items - 1] * (per_rank - len(mine)) if n_items else []


def gather_in_order(mine: Sequence, n_items: int) -> list:
    """Every rank's results of ``shard_indices``, put back in the original order (one process: as given)."""
    if not is_distributed():
        return list(mine)
    gathered: list = [None] * world_size()
    torch.distributed.all_gather_object(gathered, list(mine))
    ordered: list = [None] * n_items
    for source_rank, results in enumerate(gathered):
        for position, result in zip(range(source_rank, n_items, world_size()), results):
            ordered[position] = result  # the padding at a shard's end falls outside range() and is dropped
    return ordered


def weights_are_sharded_by_fsdp() -> bool:
    """True under ``accelerate launch`` with an FSDP config (accelerate says so in ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def generation_needs_all_ranks() -> bool:
    """True when the weights are sharded (FSDP or DeepSpeed ZeRO-3): every rank must take part in every forward pass."""
    if not is_distributed():
        return False
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or weights_are_sharded_by_fsdp()
