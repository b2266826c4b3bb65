"""A synthetic detection dataset, generated locally and deterministic by seed.

Images hold 1 to ``max_objects`` non-overlapping shapes on a noisy background, each 20-40% of the
image's short side, or ``object_px`` pixels (small objects in big images). Image sizes (and, unless
``square``, aspect ratios) vary, so the processor's resize changes every image differently: a
coordinate convention that ignores the resize shows up as wrong boxes.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from PIL import Image, ImageDraw

from helpers.data.schema import DETECTION_FEATURES

# Each class has its own shape *and* colour, so even a tiny model can tell them apart.
CLASS_STYLES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red circle": ("circle", (220, 40, 40)),
    "green square": ("square", (40, 170, 60)),
    "blue triangle": ("triangle", (40, 70, 220)),
    "yellow square": ("square", (230, 200, 30)),
    "purple circle": ("circle", (150, 50, 180)),
}


# The position tint (see make_synthetic_example): the background's red channel grows by TINT_LEVELS from the
# left edge to the right, its green channel likewise from top to bottom, over noise TINT_NOISE_LEVELS wide.
TINT_LEVELS = 40
TINT_NOISE_LEVELS = 20
BACKGROUND_LEVELS = (200, 256)  # the light noise behind the shapes: channel values in [low, high)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, xyxy_px: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> None:
    """Draw one filled shape that exactly fills its xyxy pixel box."""
    x1, y1, x2, y2 = xyxy_px
    # PIL's ellipse/rectangle include the end pixel, so draw to x2-1/y2-1 for a box of x2-x1 pixels.
    if shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=rgb)
    elif shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=rgb)
    elif shape == "triangle":
        draw.polygon([((x1 + x2 - 1) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap_px: int) -> bool:
    """True when ``box`` comes within ``gap_px`` of any box in ``others``."""
    x1, y1, x2, y2 = box
    return any(x1 < ox2 + gap_px and ox1 < x2 + gap_px and y1 < oy2 + gap_px and oy1 < y2 + gap_px for ox1, oy1, ox2, oy2 in others)


def make_synthetic_example(
    rng: np.random.Generator,
    class_names: list[str],
    min_side_px: int,
    max_side_px: int,
    max_objects: int,
    position_tint: bool = False,
    square: bool = False,
    empty: bool = False,
    object_px: tuple[int, int] | None = None,
) -> tuple[Image.Image, list[dict]]:
    """Draw one image and return it with its objects (``label``, ``bbox_xyxy_px``); ``empty`` draws the background alone.

    Shapes are 20-40% of the short side, or ``object_px`` = (smallest, largest) pixels a side.
    """
    width = int(rng.integers(min_side_px, max_side_px + 1))
    height = int(rng.integers(min_side_px, max_side_px + 1))  # drawn even when square, so the draws stay in step
    if square:
        height = width
    low, high = BACKGROUND_LEVELS
    background = rng.integers(low, high, size=(height, width, 3), dtype=np.uint8)
    if position_tint:
        # A sense of place for a vision tower that starts from random weights. Qwen2-VL and Qwen2.5-VL
        # towers have rotary positions only, which tell a patch its offset to other patches but not
        # where it sits in the image; Qwen3-VL adds learned position embeddings, interpolated to each
        # image's grid. The tint is the data's stand-in for those: each background pixel's red and
        # green levels say how far across and down the image it lies (a fraction of the side, which is
        # what Qwen2-VL and Qwen3-VL boxes are written in). Pretrained towers learnt this from data.
        # What it is worth: README, Does it learn?
        # The noise squeezed to TINT_NOISE_LEVELS, under a ceiling that leaves room for the tint: nothing clips.
        noise = (background.astype(int) - low) * TINT_NOISE_LEVELS // (high - low)
        tinted = 255 - TINT_LEVELS - TINT_NOISE_LEVELS + noise
        tinted[..., 0] += np.linspace(0, TINT_LEVELS, width).round().astype(int)[None, :]
        tinted[..., 1] += np.linspace(0, TINT_LEVELS, height).round().astype(int)[:, None]
        background = tinted.astype(np.uint8)
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)
    n_objects = int(rng.integers(1, max_objects + 1))
    boxes: list[tuple[int, int, int, int]] = []
    objects: list[dict] = []
    short_side = min(width, height)
    for _ in range(n_objects):
        for _attempt in range(50):  # rejection sampling for a free spot; crowded images get fewer objects
            share = rng.uniform(0.2, 0.4)  # one draw either way, so the relative-size stream is unchanged
            size = int(object_px[0] + (share - 0.2) / 0.2 * (object_px[1] - object_px[0])) if object_px else int(share * short_side)
            x1 = int(rng.integers(0, width - size + 1))
            y1 = int(rng.integers(0, height - size + 1))
            box = (x1, y1, x1 + size, y1 + size)
            if not _overlaps(box, boxes, gap_px=2):
                break
        else:
            continue
        label = class_names[int(rng.integers(len(class_names)))]
        boxes.append(box)
        if empty:
            continue  # every draw is still made, so the images after it are the same with or without empties
        shape, rgb = CLASS_STYLES[label]
        _draw_shape(draw, shape, box, rgb)
        objects.append({"label": label, "bbox_xyxy_px": [float(v) for v in box]})
    return image, objects


def make_synthetic_dataset(
    n_images: int,
    seed: int,
    class_names: list[str] | None = None,
    min_side_px: int = 96,
    max_side_px: int = 224,
    max_objects: int = 4,
    position_tint: bool = False,
    square: bool = False,
    empty_fraction: float = 0.0,
    object_px: tuple[int, int] | list[int] | None = None,
) -> Dataset:
    """Generate ``n_images`` synthetic detection records in the project's dataset schema; ``empty_fraction`` of them without objects.

    ``object_px``: shape sides drawn from [smallest, largest] pixels instead of 20-40% of the short side.
    """
    class_names = list(CLASS_STYLES)[:3] if class_names is None else list(class_names)
    unknown = sorted(set(class_names) - set(CLASS_STYLES))
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; choose from {sorted(CLASS_STYLES)}")
    if not 16 <= min_side_px <= max_side_px:
        raise ValueError(f"need 16 <= min_side_px <= max_side_px, got {min_side_px}, {max_side_px}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 0 <= empty_fraction <= 1:
        raise ValueError(f"empty_fraction must be within [0, 1], got {empty_fraction}")
    object_px = tuple(object_px) if object_px else None
    if object_px and not (len(object_px) == 2 and 4 <= object_px[0] <= object_px[1] <= min_side_px):
        raise ValueError(f"synthetic_object_px must be [smallest, largest] with 4 <= smallest <= largest <= min_side_px ({min_side_px}), got {list(object_px)}")
    rng = np.random.default_rng(seed)
    empties = np.random.default_rng([seed, 1]).random(n_images) < empty_fraction  # its own stream: the images stay as they were
    records = []
    for image_id in range(n_images):
        image, objects = make_synthetic_example(
            rng, class_names, min_side_px, max_side_px, max_objects, position_tint, square, empty=bool(empties[image_id]),
            object_px=object_px,
        )
        records.append({"image_id": str(image_id), "image": image, "width": image.width, "height": image.height, "objects": objects,
                        "crowd_regions": []})
    return Dataset.from_list(records, features=DETECTION_FEATURES)


# notebook parameter -> make_synthetic_dataset argument
SYNTHETIC_PARAMETERS = {
    "synthetic_classes": "class_names",
    "synthetic_min_side_px": "min_side_px",
    "synthetic_max_side_px": "max_side_px",
    "synthetic_max_objects": "max_objects",
    "synthetic_position_tint": "position_tint",
    "synthetic_square_images": "square",
    "synthetic_empty_fraction": "empty_fraction",
    "synthetic_object_px": "object_px",
}


def synthetic_options(params: dict) -> dict:
    """The ``make_synthetic_dataset`` arguments set by the notebook's ``synthetic_*`` parameters."""
    return {argument: params[name] for name, argument in SYNTHETIC_PARAMETERS.items()}
