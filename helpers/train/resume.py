"""Resuming: the newest checkpoint whose state, weights, optimizer, schedule and RNG state all read back."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFE_WEIGHTS_NAME
from transformers.trainer import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from helpers.runtime.checks import expand_path


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
