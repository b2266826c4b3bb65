"""Processor loading: the stock Qwen-VL processors, which need torchvision.

Every Qwen-VL processor holds a video processor, and every Qwen video processor is built on
torchvision, so there is one supported stack: torch with its matching torchvision
(requirements.txt). Without it we stop with the fix instead of loading a processor that hub
checkpoints and other machines do not have.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, ProcessorMixin

from helpers.families import FAMILY_NAMES, get_family

# Where a saved folder can keep its video processor's settings, in the order transformers reads them:
# nested in processor_config.json (transformers 5), video_preprocessor_config.json, or, for Qwen2-VL and
# Qwen2.5-VL as published, the image processor's preprocessor_config.json.
VIDEO_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
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


def stock_processor_class(family: str) -> type[ProcessorMixin]:
    """The family's stock processor class."""
    return getattr(transformers, get_family(family).processor_class)


def read_family(model_id_or_path: str | Path) -> str:
    """Return the Qwen-VL family (``config.model_type``) of a hub id or local checkpoint."""
    model_type = AutoConfig.from_pretrained(str(model_id_or_path)).model_type
    if model_type not in FAMILY_NAMES:
        raise ValueError(
            f"{model_id_or_path}: model_type {model_type!r} is not a supported Qwen-VL family; "
            f"supported model_type values are {', '.join(FAMILY_NAMES)}"
        )
    return model_type


def has_video_processor_config(folder: str | Path) -> bool:
    """True when a local folder holds settings a video processor can load from (a hub id is taken to)."""
    folder = Path(folder)
    if not folder.is_dir():
        return True
    nested = folder / "processor_config.json"
    if nested.is_file() and "video_processor" in json.loads(nested.read_text()):
        return True
    return any((folder / name).is_file() for name in VIDEO_CONFIG_FILES)


def video_processor_class(family: str) -> type:
    """The family's stock video processor class (looked up on demand: importing it needs torchvision)."""
    return getattr(transformers, get_family(family).video_processor_class)


def processor_from_parts(folder: str | Path, family: str) -> ProcessorMixin:
    """The stock processor of a folder saved without video settings; its video processor takes the image processor's."""
    image_processor = AutoImageProcessor.from_pretrained(str(folder))
    video_processor = video_processor_class(family)(
        patch_size=image_processor.patch_size,
        temporal_patch_size=image_processor.temporal_patch_size,
        merge_size=image_processor.merge_size,
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return stock_processor_class(family)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=tokenizer.chat_template
    )


def load_saved_processor(model_id_or_path: str | Path, family: str) -> ProcessorMixin:
    """Load the family's stock processor (its resolution bounds as saved) from a hub id or folder."""
    require_torchvision()
    if not has_video_processor_config(model_id_or_path):
        # A folder saved by an image-only processor (this project before it required torchvision)
        # has no video settings, which the stock class cannot load without.
        return processor_from_parts(model_id_or_path, family)
    return stock_processor_class(family).from_pretrained(str(model_id_or_path))


def load_processor(model_id_or_path: str | Path, min_pixels: int, max_pixels: int) -> ProcessorMixin:
    """Load the family's stock processor with the image resolution bounds set on its image processor."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    processor = load_saved_processor(model_id_or_path, read_family(model_id_or_path))
    # `size` is the supported knob; processor-call min_pixels/max_pixels are deprecated.
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return processor


def model_input_size(processor: ProcessorMixin, image_grid_thw) -> tuple[int, int]:
    """``(width, height)`` in pixels of the image the model saw, from one row of the processor's ``image_grid_thw``."""
    _, grid_h, grid_w = (int(v) for v in image_grid_thw)
    patch = processor.image_processor.patch_size
    return grid_w * patch, grid_h * patch
