"""Sliced inference: answer each tile of a big image at full resolution, map its boxes back, merge them.

The image is cut into the overlapping tiles of ``helpers.data.tiles`` (the layout training tiles use).
Every tile is one row of the usual batched generation, with its own loop control. A tile's answer is
read in the tile's frame, exactly as a whole image's is (Qwen2.5-VL: pixels of the tile as the processor
resized it, read from its own ``image_grid_thw``; the other families: 0..1000 of the tile's sides), then
moved by the tile's origin into the image's pixels. An optional whole-image pass adds the objects too
big for a tile. Boxes from all tiles and the whole image are merged per class by supervision's greedy
non-maximum merging (``nmm``: a box cut by a tile border and its other part become their union) or
suppression (``nms``), matching boxes by their intersection over the smaller box; scores are kept
(a merged box scores the area-weighted mean of its parts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from helpers.data.images import open_image
from helpers.data.tiles import TileGrid

MERGES = ("nmm", "nms")  # supervision's non-maximum merging, or suppression
MERGE_THRESHOLD = 0.5  # boxes of one class overlapping this much (intersection over the smaller box) are one object


@dataclass(frozen=True)
class Slicing:
    """How an image is sliced for inference: the tile grid, a whole-image pass or not, and the merge."""

    grid: TileGrid
    full_image_pass: bool = True
    merge: str = "nmm"
    merge_threshold: float = MERGE_THRESHOLD

    def __post_init__(self):
        if self.merge not in MERGES:
            raise ValueError(f"tile_merge must be one of {MERGES}, got {self.merge!r}")
        if not 0 < self.merge_threshold <= 1:
            raise ValueError(f"tile_merge_threshold must be in (0, 1], got {self.merge_threshold}")


def slicing_for(tile_px: int, overlap_px: int, full_image_pass: bool = True, merge: str = "nmm",
                merge_threshold: float = MERGE_THRESHOLD) -> Slicing | None:
    """The slicing the notebook's ``tile_*`` parameters ask for; None when ``tile_px`` is 0 (whole images)."""
    if tile_px == 0:
        return None
    return Slicing(TileGrid(tile_px, overlap_px), full_image_pass, merge, merge_threshold)


def to_image_frame(predictions: list[dict], window: tuple[int, int, int, int]) -> list[dict]:
    """Predictions in a tile's pixels moved into the image's pixels by the tile's origin."""
    x0, y0 = window[0], window[1]
    return [p | {"bbox_xyxy_px": [p["bbox_xyxy_px"][0] + x0, p["bbox_xyxy_px"][1] + y0,
                                   p["bbox_xyxy_px"][2] + x0, p["bbox_xyxy_px"][3] + y0]} for p in predictions]


def merge_predictions(predictions: list[dict], merge: str = "nmm", threshold: float = MERGE_THRESHOLD) -> list[dict]:
    """Boxes of one object from several tiles made one, per class, by supervision's NMM or NMS (intersection over the smaller box)."""
    if len(predictions) < 2:
        return list(predictions)
    import supervision as sv  # imported on first use: the parameter rules import this module

    labels = sorted({p["label"] for p in predictions})
    detections = sv.Detections(
        xyxy=np.array([p["bbox_xyxy_px"] for p in predictions], dtype=float),
        confidence=np.array([p["score"] for p in predictions], dtype=float),
        class_id=np.array([labels.index(p["label"]) for p in predictions]),
    )
    apply = detections.with_nmm if merge == "nmm" else detections.with_nms
    merged = apply(threshold=threshold, class_agnostic=False, overlap_metric=sv.OverlapMetric.IOS)
    return [{"label": labels[int(class_id)], "bbox_xyxy_px": [float(v) for v in box], "score": float(score)}
            for box, score, class_id in zip(merged.xyxy, merged.confidence, merged.class_id)]


class TileCrops(Sequence):
    """The tiles of many images as one sequence of crops for batched generation, each image decoded once per run of its tiles.

    ``tiles`` are ``(image index, window)`` with windows in pixels of the image's declared ``sizes``; an image
    reference that decodes smaller (a cached copy) is cropped at the same place, scaled.
    """

    def __init__(self, images: Sequence, sizes: list[tuple[int, int]], tiles: list[tuple[int, tuple[int, int, int, int]]]):
        self.images, self.sizes, self.tiles = images, sizes, tiles
        self._decoded: tuple[int, Image.Image] | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def _image(self, index: int) -> Image.Image:
        if self._decoded is None or self._decoded[0] != index:
            self._decoded = (index, open_image(self.images[index]))
        return self._decoded[1]

    def crop(self, position: int) -> Image.Image:
        """The tile at ``position``, cut from its image."""
        index, window = self.tiles[position]
        image = self._image(index)
        scale_x, scale_y = image.width / self.sizes[index][0], image.height / self.sizes[index][1]
        return image.crop((round(window[0] * scale_x), round(window[1] * scale_y), round(window[2] * scale_x), round(window[3] * scale_y)))

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.crop(position) for position in range(*item.indices(len(self)))]
        return self.crop(item)
