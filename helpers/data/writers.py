"""A split in the schema written out as a COCO or a YOLO folder: for worked examples, and for tests of the loaders."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from helpers.data.images import open_image


def write_coco_split(dataset: Dataset, folder: str | Path, split: str, names: list[str], missing_images: int = 0) -> Path:
    """Write ``<folder>/<split>/annotations.json`` (boxes xywh, category ids from 1 in ``names``' order) and the images as PNGs.

    The first ``missing_images`` image files are left out, to show how the loader counts them.
    """
    split_dir = Path(folder) / split
    split_dir.mkdir(parents=True, exist_ok=True)
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
    path = split_dir / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_yolo_split(dataset: Dataset, folder: str | Path, split: str, names: list[str]) -> Path:
    """Write an Ultralytics YOLO split, ``images/<split>/*.png`` and ``labels/<split>/*.txt`` (normalised centre boxes), and ``data.yaml``."""
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
    return images
