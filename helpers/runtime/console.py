"""What the notebook prints: the known warnings nobody can act on are silenced, once, by an explicit call."""

from __future__ import annotations

import logging
import warnings


def quiet_known_warnings() -> None:
    """Silence three warnings that say nothing a reader can act on; everything else still shows."""
    # tqdm.auto, which transformers and datasets use, looks for ipywidgets (not a dependency) in a kernel, warns,
    # and falls back to text bars, which render in Jupyter and in papermill logs alike.
    warnings.filterwarnings("ignore", message="IProgress not found")
    # bitsandbytes (imported by peft and TRL) looks for an optional CPU 4-bit kernel package at import; 4-bit
    # training runs on CUDA only here, so its absence changes nothing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # TRL 1.16's GRPO trainer asks transformers 5.24 the old name of activation checkpointing at every step.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
