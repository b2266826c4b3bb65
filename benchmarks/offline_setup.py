"""What every benchmark shares: the command-line basics, the offline model, and the real-size architectures.

The offline profile is the tiny random model built locally (``helpers.offline``). The real-size
models are the published architectures (``helpers/families/hub_configs/<family>/config.json``) with random
weights, on the real vocabulary (``tests.support.real_vocab``): speed and memory depend on the shapes and
the token counts, not on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import AutoModelForImageTextToText, GenerationConfig, set_seed  # noqa: E402

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS  # noqa: E402
from helpers.families.chat import detection_prompt  # noqa: E402
from helpers.families.registry import HUB_CONFIGS_DIR  # noqa: E402
from helpers.offline import build_tiny_checkpoint  # noqa: E402
from helpers.families.registry import FAMILY_NAMES  # noqa: E402
from helpers.families.processors import load_processor  # noqa: E402
from helpers.families.registry import get_family  # noqa: E402
from speed_accounting import real_size_config  # noqa: E402 (beside this file)

CLASSES = ["red circle", "green square", "blue triangle"]  # the offline demo's classes
# Real-size images get the bounds of the Qwen2-VL-2B GPU preset (448*448 .. 28*28*1280 pixels).
GPU_PRESET = yaml.safe_load((REPO_ROOT / "params" / "qwen2_vl_2b_gpu.yaml").read_text())
REAL_MIN_PIXELS, REAL_MAX_PIXELS = GPU_PRESET["min_pixels"], GPU_PRESET["max_pixels"]
REAL_SIDES_PX = (320, 1600)  # synthetic real-size images: sides drawn in this range, any aspect ratio


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--family`` and ``--model-dir``; each benchmark adds its own sizes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--family", default="qwen2_vl", choices=list(FAMILY_NAMES))
    parser.add_argument("--model-dir", default="outputs/.offline_models", help="cache of the offline (and real-size) checkpoints")
    return parser


def offline_model(family: str, model_dir: str):
    """Seeded tiny model (sdpa), its processor and the detection prompt, built once into ``model_dir``."""
    set_seed(0)
    checkpoint = build_tiny_checkpoint(get_family(family), Path(model_dir) / family)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="sdpa")
    return model, load_processor(checkpoint, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS), detection_prompt(get_family(family), CLASSES)


def real_size_checkpoint(family: str, folder: str | Path, device: str) -> Path:
    """Write (once) the published architecture with seeded random bf16 weights and the published generation config."""
    folder = Path(folder)
    stamp = folder / "real_size_build.json"
    config = real_size_config(family)
    recipe = {"family": family, "config": config.to_diff_dict()}
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(recipe, default=str)):
        return folder
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it will run: seconds on a GPU, minutes on a CPU for 2B weights
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig.from_pretrained(HUB_CONFIGS_DIR / family)
    model.save_pretrained(folder)
    stamp.write_text(json.dumps(recipe, default=str))
    del model
    return folder
