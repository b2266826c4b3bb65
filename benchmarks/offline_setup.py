"""What every benchmark shares: the command-line basics and the offline model, processor and prompt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks run as scripts from anywhere

from transformers import AutoModelForImageTextToText, set_seed  # noqa: E402

from helpers.formatting import detection_prompt  # noqa: E402
from helpers.offline import build_tiny_checkpoint  # noqa: E402
from helpers.families import FAMILY_NAMES  # noqa: E402
from helpers.processing import load_processor  # noqa: E402

MIN_PIXELS, MAX_PIXELS = 3136, 50176  # the offline demo's bounds
CLASSES = ["red circle", "green square", "blue triangle"]  # the offline demo's classes


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--family`` and ``--model-dir``; each benchmark adds its own sizes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--family", default="qwen2_vl", choices=list(FAMILY_NAMES))
    parser.add_argument("--model-dir", default="outputs/.offline_models", help="cache of the offline checkpoints")
    return parser


def offline_model(family: str, model_dir: str):
    """Seeded tiny model (sdpa), its processor and the detection prompt, built once into ``model_dir``."""
    set_seed(0)
    checkpoint = build_tiny_checkpoint(family, Path(model_dir) / family)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="sdpa")
    return model, load_processor(checkpoint, MIN_PIXELS, MAX_PIXELS), detection_prompt(family, CLASSES)
