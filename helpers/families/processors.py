"""Processor loading: the stock Qwen-VL processors, which need torchvision.

Every Qwen-VL processor holds a video processor, and every Qwen video processor is built on
torchvision, so there is one supported stack: torch with its matching torchvision
(requirements.txt). Without it we stop with the fix instead of loading a processor that hub
checkpoints and other machines do not have.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import transformers
from transformers import AutoConfig, ProcessorMixin

from helpers.families.chat import generation_prompt
from helpers.families.registry import FAMILIES, FAMILY_NAMES, Family


# The notebook's defaults: 56*56 .. 224*224 pixels, so a Qwen2-VL image (patch 14, merge 2) gets 4 to 64 visual tokens.
DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS = 3136, 50176
# transformers' Qwen2VLImageProcessor defaults, 56*56 .. 28*28*1280 pixels (4 to 1280 visual tokens): real-size images.
QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS = 3136, 1003520


TORCHVISION_FIX = (
    "install the torch/torchvision pair pinned in requirements.txt (pip install -r requirements.txt); "
    "for the smaller CPU-only build of the pair: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu"
)


def torchvision_problem() -> str | None:
    """Why torchvision cannot be used here (missing, or built for another torch), or None when it imports."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        return "torchvision is not installed"
    except Exception as error:  # a torchvision built for another torch fails at import with RuntimeError
        return f"torchvision does not import beside torch: {type(error).__name__}: {error}"
    return None


def require_torchvision() -> None:
    """Raise an error naming the fix when torchvision is missing or does not match torch."""
    problem = torchvision_problem()
    if problem is not None:
        raise ImportError(f"{problem}. Every Qwen-VL processor needs it (its video processor); {TORCHVISION_FIX}")


def stock_processor_class(family: Family) -> type[ProcessorMixin]:
    """The family's stock processor class."""
    return getattr(transformers, family.processor_class)


def read_family(model_id_or_path: str | Path) -> Family:
    """The Qwen-VL family record of a hub id or local checkpoint, from its ``config.model_type``."""
    model_type = AutoConfig.from_pretrained(str(model_id_or_path)).model_type
    if model_type not in FAMILIES:
        raise ValueError(
            f"{model_id_or_path}: model_type {model_type!r} is not a supported Qwen-VL family; "
            f"supported model_type values are {', '.join(FAMILY_NAMES)}"
        )
    return FAMILIES[model_type]


def load_saved_processor(model_id_or_path: str | Path, family: Family) -> ProcessorMixin:
    """Load the family's stock processor (its resolution bounds as saved) from a hub id or folder."""
    require_torchvision()
    return stock_processor_class(family).from_pretrained(str(model_id_or_path))


def load_processor(model_id_or_path: str | Path, min_pixels: int, max_pixels: int) -> ProcessorMixin:
    """Load the family's stock processor with the image resolution bounds set on its image processor."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    family = read_family(model_id_or_path)
    processor = load_saved_processor(model_id_or_path, family)
    # `size` is the supported knob; processor-call min_pixels/max_pixels are deprecated.
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    generation_prompt(processor, family.chat_template_kwargs)  # refuses a template that cannot answer without thinking
    return processor


def model_input_size(processor: ProcessorMixin, image_grid_thw) -> tuple[int, int]:
    """``(width, height)`` in pixels of the image the model saw, from one row of the processor's ``image_grid_thw``."""
    _, grid_h, grid_w = (int(v) for v in image_grid_thw)
    patch = processor.image_processor.patch_size
    return grid_w * patch, grid_h * patch
