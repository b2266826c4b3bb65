"""Tiles: the overlapping windows a big image is cut into, and training splits made of them.

A Qwen-VL model sees an image only after the processor shrinks it to ``max_pixels``: a 20-pixel object in a
4000x3000 photo becomes 6 pixels at Qwen2-VL's default bounds. Cut into tiles, the image is seen at (near)
full resolution, piece by piece. The same layout serves training (``tile_split``: each training image
becomes its tiles, boxes clipped to them) and sliced inference (``helpers.evaluate.slicing``), so the model
meets objects at one scale in both.

Layout: tiles of ``tile_px`` a side step by ``tile_px - overlap_px``; the last tile of a row or column is
moved back to end at the image's edge, so every tile is whole and seen at one scale, unless the image is
smaller than a tile, which is then one tile: the image itself. Overlapping tiles are laid as supervision's
``InferenceSlicer`` lays them (tested); without overlap it leaves a narrow last tile, which this layout moves back.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from datasets import Dataset
from PIL import Image
from tqdm import tqdm  # text bars: they render in Jupyter and in papermill logs alike

from helpers.data.images import JPEG_QUALITY, decode_image, image_bytes, open_header, source_identity
from helpers.data.records import records_to_dataset
from helpers.families.boxes import resized_size
from helpers.families.registry import Family

TILING_COUNTS = "tiling"  # the data report's key for what tiling kept and dropped
MIN_VISIBILITY = 0.5  # an object keeping less of its area in a tile is not a target there
NEGATIVE_RATIO = 0.2  # at most this share of a tiled split's tiles are empty (negatives)
TILE_FOLDER = "tiles"  # under the image cache's root


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``tile_px`` a side overlapping by ``overlap_px``."""

    tile_px: int
    overlap_px: int

    def __post_init__(self):
        if self.tile_px < 16:
            raise ValueError(f"tile_px must be at least 16 (0 turns tiling off), got {self.tile_px}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(f"tile_overlap_px must be >= 0 and below tile_px ({self.tile_px}), got {self.overlap_px}")

    def windows(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The tiles of a ``width`` x ``height`` image, ``(x1, y1, x2, y2)`` in its pixels, row by row."""
        return [(x, y, min(x + self.tile_px, width), min(y + self.tile_px, height))
                for y in tile_starts(height, self.tile_px, self.overlap_px) for x in tile_starts(width, self.tile_px, self.overlap_px)]


def tile_starts(size_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Where the tiles along one side start: every ``tile_px - overlap_px``, the last one flush with the edge."""
    if size_px <= tile_px:
        return [0]
    last = size_px - tile_px
    starts = list(range(0, last, tile_px - overlap_px))
    return starts if starts[-1] == last else [*starts, last]


def clip_to_window(bbox_xyxy_px: list[float], window: tuple[int, int, int, int]) -> tuple[list[float] | None, float]:
    """The part of a box inside ``window``, in the window's own pixels, and the share of the box's area it keeps (0: outside)."""
    x1, y1, x2, y2 = bbox_xyxy_px
    wx1, wy1, wx2, wy2 = window
    ix1, iy1, ix2, iy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
    area = (x2 - x1) * (y2 - y1)
    if ix2 <= ix1 or iy2 <= iy1 or area <= 0:
        return None, 0.0
    return [ix1 - wx1, iy1 - wy1, ix2 - wx1, iy2 - wy1], (ix2 - ix1) * (iy2 - iy1) / area


def objects_in_window(objects: list[dict], window: tuple[int, int, int, int], min_visibility: float) -> tuple[list[dict], int]:
    """The objects a tile keeps (clipped, in tile pixels) and how many it cuts (visible, but under ``min_visibility`` of their area)."""
    kept, cut = [], 0
    for obj in objects:
        box, visible = clip_to_window(obj["bbox_xyxy_px"], window)
        if box is None:
            continue
        if visible >= min_visibility:
            kept.append({"label": obj["label"], "bbox_xyxy_px": box})
        else:
            cut += 1
    return kept, cut


@dataclass
class TilingCounts:
    """What cutting a split into tiles made, kept and dropped (the data report's ``tiling`` entry)."""

    images: int = 0
    tiles: int = 0  # every tile cut, before negatives were capped
    tiles_with_objects: int = 0
    negatives_kept: int = 0
    negatives_dropped: int = 0  # empty tiles over the negative ratio
    boxes_kept: int = 0  # object pieces that are targets in some tile (an object in two tiles counts twice)
    boxes_cut: int = 0  # object pieces under the minimum visibility: visible in a tile, not a target there

    def as_dict(self) -> dict:
        """The counts as plain JSON."""
        return asdict(self)


def negatives_to_keep(n_positive: int, n_negative: int, negative_ratio: float) -> int:
    """Empty tiles kept so that they make at most ``negative_ratio`` of the kept tiles (1: all)."""
    if negative_ratio >= 1:
        return n_negative
    return min(n_negative, int(negative_ratio / (1 - negative_ratio) * n_positive))


class TileWriter:
    """Writes tile crops as files in a folder, each at most the model's input size, named by source, window and size (reused when present)."""

    def __init__(self, folder: str | Path, resize: Callable[[int, int], tuple[int, int]]):
        """``resize`` maps a tile's ``(width, height)`` to the model's input size (the image cache's rule)."""
        self.folder = Path(folder)
        self.resize = resize

    def write(self, source_key: str, image: Image.Image, window: tuple[int, int, int, int], is_jpeg: bool) -> dict:
        """Crop ``window`` from ``image``, shrink it to the model's input size when larger, write it once; its image reference."""
        width, height = window[2] - window[0], window[3] - window[1]
        target = self.resize(width, height)
        suffix = "jpg" if is_jpeg else "png"
        name = hashlib.sha1(f"{source_key}|{window}|{target}".encode()).hexdigest() + f".{suffix}"
        path = self.folder / name
        if not path.is_file():
            tile = image.crop(window)
            if target[0] * target[1] < width * height:
                tile = tile.resize(target, Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            tile.save(buffer, **({"format": "JPEG", "quality": JPEG_QUALITY} if is_jpeg else {"format": "PNG", "compress_level": 1}))
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_bytes(buffer.getvalue())
            partial.replace(path)  # whole or absent
        return {"path": str(path), "bytes": None}


def source_key(reference: dict) -> str:
    """What identifies an image's pixels: its file's identity (the image cache's), or a hash of its bytes."""
    path = reference.get("path") if reference.get("bytes") is None else None
    return source_identity(Path(path)) if path else hashlib.sha1(image_bytes(reference)).hexdigest()


def tile_split(
    dataset: Dataset, grid: TileGrid, writer: TileWriter, *, min_visibility: float = MIN_VISIBILITY,
    negative_ratio: float = NEGATIVE_RATIO, seed: int = 0, description: str = "tiles",
) -> tuple[Dataset, TilingCounts]:
    """Each image of a split cut into its tiles: records in the split's schema, boxes clipped to each tile in its pixels.

    An object keeps a tile when at least ``min_visibility`` of its area is inside it; empty tiles are kept as
    negatives up to ``negative_ratio`` of the split's tiles, chosen with ``seed``. Tile ids are
    ``<image_id>@<x1>,<y1>``; tile files go through ``writer``.
    """
    counts = TilingCounts()
    tiles: list[dict] = []
    for example in tqdm(dataset, total=len(dataset), desc=description, unit="image"):
        reference = example["image"]
        data = image_bytes(reference)
        image, is_jpeg = decode_image(data), open_header(data).format == "JPEG"
        key = source_key(reference)
        counts.images += 1
        for window in grid.windows(example["width"], example["height"]):
            objects, cut = objects_in_window(example["objects"], window, min_visibility)
            crowds, _ = objects_in_window(example.get("crowd_regions") or [], window, 0.0)
            counts.tiles += 1
            counts.boxes_kept += len(objects)
            counts.boxes_cut += cut
            record = {
                "image_id": f"{example['image_id']}@{window[0]},{window[1]}", "image": writer.write(key, image, window, is_jpeg),
                "width": window[2] - window[0], "height": window[3] - window[1], "objects": objects, "crowd_regions": crowds,
            }
            tiles.append(record)
    negatives = [index for index, record in enumerate(tiles) if not record["objects"]]
    keep = negatives_to_keep(len(tiles) - len(negatives), len(negatives), negative_ratio)
    dropped = set(np.random.default_rng(seed).permutation(negatives)[keep:].tolist())
    counts.tiles_with_objects = len(tiles) - len(negatives)
    counts.negatives_kept, counts.negatives_dropped = keep, len(negatives) - keep
    # Tiles stay in image order, so a split reads as its images did; the training sampler shuffles them.
    return records_to_dataset(record for index, record in enumerate(tiles) if index not in dropped), counts


def tile_writer_for(cache_root: str | Path, family: Family, min_pixels: int, max_pixels: int) -> TileWriter:
    """A writer of tile files under ``cache_root/tiles``, each at most the model's input size for ``family`` and the pixel bounds."""
    return TileWriter(Path(cache_root) / TILE_FOLDER, lambda width, height: resized_size(family, width, height, min_pixels, max_pixels))
