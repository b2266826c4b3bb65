"""Tables and example data shared by several test modules."""

from __future__ import annotations

import numpy as np

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, QWEN2_VL_MAX_PIXELS, QWEN2_VL_MIN_PIXELS
from helpers.families.registry import FAMILIES as REGISTRY
from helpers.families.registry import Family
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.data.images import open_image
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


def write_coco_split(dataset, folder, split: str, missing_images: int = 0) -> None:
    """Write a schema dataset as ``<folder>/<split>/annotations.json`` + PNGs; the first ``missing_images`` files are left out."""
    import json
    from pathlib import Path

    split_dir = Path(folder) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({obj["label"] for objects in dataset["objects"] for obj in objects})
    images, annotations = [], []
    for index, example in enumerate(dataset):
        file_name = f"{index:05d}.png"
        if index >= missing_images:
            open_image(example["image"]).save(split_dir / file_name)
        images.append({"id": index, "file_name": file_name, "width": example["width"], "height": example["height"]})
        for obj in example["objects"]:
            x1, y1, x2, y2 = obj["bbox_xyxy_px"]
            annotations.append({"id": len(annotations), "image_id": index, "category_id": names.index(obj["label"]) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    (split_dir / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_yolo_split(dataset, folder, split: str, names: list[str]) -> None:
    """Write a schema dataset as an Ultralytics YOLO split: ``images/<split>/*.png``, ``labels/<split>/*.txt`` (normalised centre boxes)."""
    from pathlib import Path

    images, labels = Path(folder) / "images" / split, Path(folder) / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for index, example in enumerate(dataset):
        open_image(example["image"]).save(images / f"{index:05d}.png")
        width, height = example["width"], example["height"]
        lines = []
        for obj in example["objects"]:
            x1, y1, x2, y2 = obj["bbox_xyxy_px"]
            lines.append(f"{names.index(obj['label'])} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                         f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        (labels / f"{index:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (Path(folder) / "data.yaml").write_text("names:\n" + "".join(f"  - {name}\n" for name in names))
