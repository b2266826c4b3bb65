"""Tables and example data shared by several test modules."""

from __future__ import annotations

import numpy as np

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, QWEN2_VL_MAX_PIXELS, QWEN2_VL_MIN_PIXELS
from helpers.families.registry import FAMILIES as REGISTRY
from helpers.families.registry import Family
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.data.synthetic import make_synthetic_dataset

FAMILIES = list(REGISTRY.values())  # every supported family's record (test ids: its model_type, tests/conftest.py)


def _random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` seeded (width, height) pairs from 1 to 4000 px with an aspect ratio under 200."""
    rng = np.random.default_rng(seed)
    sizes = []
    while len(sizes) < n:
        width, height = (int(v) for v in np.exp(rng.uniform(0, np.log(4000), 2)))
        if max(width, height) / min(width, height) < 200:
            sizes.append((width, height))
    return sizes


# Tiny, typical, huge and extreme aspect ratios (smart_resize refuses 200:1 and beyond), then random.
IMAGE_SIZES: list[tuple[int, int]] = [
    (1, 1), (2, 3), (14, 14), (27, 29), (57, 57), (96, 224), (224, 96), (640, 480), (1920, 1080),
    (4000, 3000), (33, 1200), (1200, 33), (10, 1990), (3980, 20),
] + _random_sizes(16, seed=0)

# (min_pixels, max_pixels): the notebook's defaults, the offline demo's one-grid bounds and Qwen2-VL's defaults.
PIXEL_BOUNDS = [(DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS), (12544, 12544), (QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS)]


def chat_examples(family: Family, n: int = 4, seed: int = 11, system_prompt: str = "", empty_fraction: float = 0.0) -> list[dict]:
    """``n`` examples with different image sizes and answer lengths, as the notebook formats them."""
    ds = make_synthetic_dataset(n, seed=seed, max_objects=4, min_side_px=60, max_side_px=260, empty_fraction=empty_fraction)
    prompt = detection_prompt(family, ["red circle", "green square"])
    ds = add_chat_columns(ds, family, prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, system_prompt)
    return [ds[i] for i in range(n)]
