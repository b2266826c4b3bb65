"""Processor loading that works with and without torchvision.

The stock Qwen-VL processors cannot be built without a video processor, and every Qwen video
processor needs torchvision, which has no CPU build on our machines (see shared/ENVIRONMENT.md).
Detection needs images only, so where torchvision is missing we load an image-only subclass of
the family's processor; where it is present we load the stock processor. Both expose the same
``__call__``, ``apply_chat_template``, ``tokenizer`` and ``image_processor``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoConfig, AutoProcessor, ProcessorMixin
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLProcessor
from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLProcessor

SUPPORTED_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # config.model_type values


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the torchvision-only video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the torchvision-only video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor without the torchvision-only video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


STOCK_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLProcessor,
    "qwen2_5_vl": Qwen2_5_VLProcessor,
    "qwen3_vl": Qwen3VLProcessor,
}
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
}

# Without this, AutoProcessor.from_pretrained(dir) on a checkpoint saved with an image-only
# processor silently returns the bare tokenizer (shared/ENVIRONMENT.md).
for _config_cls, _family in ((Qwen2VLConfig, "qwen2_vl"), (Qwen2_5_VLConfig, "qwen2_5_vl"), (Qwen3VLConfig, "qwen3_vl")):
    AutoProcessor.register(_config_cls, IMAGE_ONLY_PROCESSORS[_family], exist_ok=True)


def has_torchvision() -> bool:
    """True when torchvision is installed and imports (it needs matching torch operators)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision built for another torch fails at import with RuntimeError
        return False
    return True


def read_family(model_id_or_path: str | Path) -> str:
    """Return the Qwen-VL family (``config.model_type``) of a hub id or local checkpoint."""
    model_type = AutoConfig.from_pretrained(str(model_id_or_path)).model_type
    if model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"{model_id_or_path}: model_type {model_type!r} is not a supported Qwen-VL family; "
            f"expected one of {SUPPORTED_FAMILIES}"
        )
    return model_type


def processor_class_for(family: str, torchvision_available: bool) -> type[ProcessorMixin]:
    """Pick the stock processor when torchvision works, else the image-only subclass."""
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {SUPPORTED_FAMILIES}")
    return STOCK_PROCESSORS[family] if torchvision_available else IMAGE_ONLY_PROCESSORS[family]


def load_processor(model_id_or_path: str | Path, min_pixels: int, max_pixels: int) -> ProcessorMixin:
    """Load the family's processor with the image resolution bounds set on its image processor."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    family = read_family(model_id_or_path)
    processor_cls = processor_class_for(family, has_torchvision())
    processor = processor_cls.from_pretrained(str(model_id_or_path))
    # `size` is the supported knob; processor-call min_pixels/max_pixels are deprecated.
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return processor


def load_saved_processor(processor_dir: str | Path, family: str) -> ProcessorMixin:
    """Load a processor saved by a run (its resolution bounds as saved) for the given family."""
    return processor_class_for(family, has_torchvision()).from_pretrained(str(processor_dir))
