"""Logging backends: W&B (online, offline, disabled) and TensorBoard, kept inside the run folder.

Secrets (``WANDB_API_KEY``, ``HF_TOKEN``) are only read from the environment by the libraries
that need them; nothing here prints or stores their values.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

REPORT_TO_CHOICES = ("none", "wandb", "tensorboard")  # where the trainer reports: nowhere, W&B or TensorBoard
WANDB_MODES = ("online", "offline", "disabled")


def has_wandb_credentials(environ: dict) -> bool:
    """True when W&B can log in: ``WANDB_API_KEY`` set, or an ``api.wandb.ai`` entry in ``~/.netrc``."""
    if environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def configure_reporting(report_to: str, run_dir: str | Path, environ: dict = os.environ, print_fn=print) -> str:
    """Point the chosen backend at the run folder; W&B online without credentials falls back to offline.

    Returns the W&B mode in use (or ``report_to`` for the other backends). Mutates ``environ``.
    """
    if report_to not in REPORT_TO_CHOICES:
        raise ValueError(f"report_to={report_to!r}; expected one of {REPORT_TO_CHOICES}")
    if report_to == "tensorboard":
        environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / "tensorboard")
        return report_to
    if report_to != "wandb":
        return report_to
    environ["WANDB_DIR"] = str(run_dir)  # W&B writes its local files under WANDB_DIR/wandb
    # Its service also writes core-debug and symon-debug logs under ~/.cache/wandb/logs (measured with
    # wandb 0.31) unless WANDB_CACHE_DIR says otherwise; artifacts are staged under WANDB_DATA_DIR.
    environ["WANDB_CACHE_DIR"] = str(Path(run_dir) / "wandb" / "cache")
    environ["WANDB_DATA_DIR"] = str(Path(run_dir) / "wandb" / "data")
    mode = environ.get("WANDB_MODE", "online")
    if mode not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE={mode!r}; expected one of {WANDB_MODES}")
    if mode == "online" and not has_wandb_credentials(environ):
        print_fn("W&B: no WANDB_API_KEY and no ~/.netrc login, so logging offline; `wandb sync` the run folder later")
        mode = environ["WANDB_MODE"] = "offline"
    return mode
