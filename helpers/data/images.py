"""Images stay on disk until a batch needs them: safe reads, 8-bit RGB, and a downscaled cache.

A split's ``image`` column holds references, never pixels: ``{"path": file, "bytes": None}`` for
files, or a hub dataset's encoded ``{"bytes": ..., "path": None}``. ``open_image`` decodes one when
a batch needs it, always the same way: EXIF orientations 2-8 applied (0 and 1 mean upright), and
every mode turned into 8-bit RGB, with 16-bit, 32-bit and float pixels scaled rather than clipped.

The optional cache (``ImageCache``) holds each image already downscaled to the size the processor
feeds the model, built once per (source file, family resize factor, ``min_pixels``, ``max_pixels``).
Boxes never change frame: they stay in pixels of the upright original image, and a cached image
is only a smaller copy of it (plots stretch it back over the original's extent).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps
from tqdm import tqdm  # text bars: they render in Jupyter and in papermill logs alike

MAX_IMAGE_BYTES = 512 * 2**20  # a larger "image" file is refused before it is read (a device or a mistake)
ROTATED_ORIENTATIONS = range(2, 9)  # EXIF orientations that move pixels; 0 (unset) and 1 mean upright
SIDE_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # the ones that turn the image a quarter turn
MAX_ASPECT_RATIO = 200  # transformers' smart_resize refuses longer/shorter sides beyond this
CACHE_INDEX = "index.json"
JPEG_QUALITY = 95  # cache copies of JPEG sources; other sources are cached as PNG, losslessly
PARALLEL_WINDOW = 64  # images in flight at once, so reading ahead never piles up encoded bytes


class NotARegularFile(OSError):
    """The path is a device, a FIFO, a folder or a socket: it is never read."""


class ImageTooLarge(OSError):
    """The file is larger than ``MAX_IMAGE_BYTES``."""


def check_readable(path: str | Path, info: os.stat_result, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """Raise ``NotARegularFile`` or ``ImageTooLarge`` for a file whose status ``info`` says it must not be read."""
    if not stat.S_ISREG(info.st_mode):
        raise NotARegularFile(f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise ImageTooLarge(f"{path} holds {info.st_size} bytes, over the {max_bytes}-byte bound")


def read_regular_file(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Read a regular file whole; a FIFO, device or folder raises ``NotARegularFile`` without blocking."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        check_readable(path, os.fstat(descriptor), max_bytes)
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            return handle.read(max_bytes + 1)
    finally:
        os.close(descriptor)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a corrupt EXIF block is no orientation, not an unreadable image
        return 1
    return value if isinstance(value, int) else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the image as displayed, from its stored size and EXIF orientation."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in SIDE_SWAPPING_ORIENTATIONS else (width, height)


def make_upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientations 2-8; an upright image (orientation 0, 1 or none) is returned as is."""
    return ImageOps.exif_transpose(image) if exif_orientation(image) in ROTATED_ORIENTATIONS else image


def scaled_to_uint8(pixels: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map pixel values onto 0..255: by ``full_scale`` when given, else by the values' own range."""
    pixels = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if full_scale is None:
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    else:
        pixels = pixels / full_scale
    return np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB pixels: 16/32-bit integer and float images scaled, palette, CMYK and alpha converted by Pillow."""
    if image.mode.startswith("I;16"):
        gray = scaled_to_uint8(np.asarray(image), 65535)
    elif image.mode == "I":
        # 32-bit integers: 16-bit PNGs open in this mode too, so the full scale follows the values.
        values = np.asarray(image)
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        full_scale = None if low < 0 or high > 65535 else 255 if high <= 255 else 65535
        gray = scaled_to_uint8(values, full_scale)
    elif image.mode == "F":
        values = np.asarray(image)
        finite = values[np.isfinite(values)]
        in_unit_range = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
        gray = scaled_to_uint8(values, 1.0 if in_unit_range else None)
    else:
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(gray, mode="L").convert("RGB")


def open_header(data: bytes) -> Image.Image:
    """Open encoded bytes without decoding the pixels; anything Pillow cannot read raises ``OSError``."""
    try:
        return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise OSError(str(error)) from error


def decode_image(data: bytes, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode encoded bytes fully, upright and in 8-bit RGB; ``draft_size`` lets a JPEG decode at a reduced scale."""
    image = open_header(data)
    try:
        if draft_size is not None and image.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly, never below the size asked for.
            stored = draft_size[::-1] if exif_orientation(image) in SIDE_SWAPPING_ORIENTATIONS else draft_size
            image.draft("RGB", stored)
        image.load()  # decode fully now: a truncated file fails here
    except (Image.DecompressionBombError, SyntaxError, ValueError) as error:
        raise OSError(str(error)) from error
    return to_rgb8(make_upright(image))


def image_bytes(value: dict | str | Path) -> bytes:
    """The encoded bytes of an image reference (``{"bytes", "path"}`` or a path)."""
    if isinstance(value, (str, Path)):
        return read_regular_file(value)
    if value.get("bytes") is not None:
        return value["bytes"]
    if value.get("path") is None:
        raise FileNotFoundError("the image reference holds neither bytes nor a path")
    return read_regular_file(value["path"])


def open_image(value: dict | str | Path | Image.Image) -> Image.Image:
    """Decode one image reference from a split's ``image`` column into upright 8-bit RGB."""
    if isinstance(value, Image.Image):
        return to_rgb8(value)
    return decode_image(image_bytes(value))


def open_images(values: Iterable) -> list[Image.Image]:
    """Decode a batch of image references (see ``open_image``)."""
    return [open_image(value) for value in values]


# ---------------------------------------------------------------- preparing: probe and cache


@dataclass(frozen=True)
class PreparedImage:
    """What loading learnt about one image: its upright size and the reference a split stores."""

    width: int
    height: int
    reference: dict
    how: str  # "probed" (no cache), "cache_hit" or "cache_built"


def cache_key(data_key: str, resize_key: str) -> str:
    """File stem of a cached image: a hash of the source's identity and the resize settings."""
    return hashlib.sha1(f"{data_key}|{resize_key}".encode()).hexdigest()


def source_identity(path: Path) -> str:
    """A file's identity for the cache: its absolute path, size and modification time."""
    info = path.stat()
    return f"{path.absolute()}|{info.st_size}|{info.st_mtime_ns}"


class ImageCache:
    """A folder of images downscaled to the model's input size, with an index of upright original sizes."""

    def __init__(self, folder: str | Path, resize: Callable[[int, int], tuple[int, int]], resize_key: str):
        """``resize`` maps an upright original ``(width, height)`` to the model's input size; ``resize_key`` names it."""
        self.folder = Path(folder)
        self.resize = resize
        self.resize_key = resize_key
        index_file = self.folder / CACHE_INDEX
        self.index: dict[str, list] = json.loads(index_file.read_text()) if index_file.is_file() else {}

    def lookup(self, key: str) -> PreparedImage | None:
        """The cached entry for ``key`` when its file is still there."""
        entry = self.index.get(key)
        if entry is None:
            return None
        width, height, file_name = entry
        path = self.folder / file_name
        return PreparedImage(width, height, {"path": str(path), "bytes": None}, "cache_hit") if path.is_file() else None

    def build(self, key: str, data: bytes, original: Path | None) -> PreparedImage:
        """Decode ``data`` (drafted for JPEG), downscale it to the model's size and write it; an image needing no change is referenced or copied as is."""
        header = open_header(data)
        width, height = upright_size(header)
        check_aspect_ratio(width, height)
        target = self.resize(width, height)
        shrink = target[0] * target[1] < width * height
        image = decode_image(data, draft_size=target if shrink else None)  # decoded even when kept as is: it must decode
        unchanged = header.mode == "RGB" and exif_orientation(header) not in ROTATED_ORIENTATIONS and not shrink
        if unchanged and original is not None:
            file_name = str(original.absolute())  # the file itself is already what the model gets
        else:
            if unchanged:
                payload, suffix = data, (header.format or "bin").lower()
            else:
                is_jpeg = header.format == "JPEG"
                buffer = io.BytesIO()
                image = image.resize(target, Image.Resampling.BICUBIC) if shrink else image
                image.save(buffer, **({"format": "JPEG", "quality": JPEG_QUALITY} if is_jpeg else {"format": "PNG", "compress_level": 1}))
                payload, suffix = buffer.getvalue(), "jpg" if is_jpeg else "png"
            file_name = f"{key}.{suffix}"
            self.folder.mkdir(parents=True, exist_ok=True)  # made by the first image it holds, not before
            partial = self.folder / f"{file_name}.{os.getpid()}.{threading.get_ident()}.partial"  # two writers never share one
            partial.write_bytes(payload)
            partial.replace(self.folder / file_name)  # whole or absent: a killed build leaves no half image
        self.index[key] = [width, height, file_name]
        return PreparedImage(width, height, {"path": str(self.folder / file_name), "bytes": None}, "cache_built")

    def save_index(self) -> None:
        """Write the index whole (a temporary file renamed over the old one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{CACHE_INDEX}.{os.getpid()}.partial"
        partial.write_text(json.dumps(self.index))
        partial.replace(self.folder / CACHE_INDEX)


def check_aspect_ratio(width: int, height: int) -> None:
    """Raise ``ValueError`` for an image the processor refuses (longer side over 200 times the shorter)."""
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {max(width, height)}:{min(width, height)} is over the processor's limit of {MAX_ASPECT_RATIO}:1")


def probe_image(data: bytes) -> tuple[int, int]:
    """Upright ``(width, height)`` of encoded bytes, after checking they decode (JPEG at 1/8 scale, which is fast)."""
    width, height = upright_size(open_header(data))
    check_aspect_ratio(width, height)
    decode_image(data, draft_size=(max(1, width // 8), max(1, height // 8)))
    return width, height


def prepare_image(reference: dict, cache: ImageCache | None) -> PreparedImage:
    """Check one image reference decodes and learn its upright size; with a cache, build or reuse its small copy.

    Raises ``FileNotFoundError``, ``NotARegularFile``, ``ImageTooLarge``, ``OSError`` (cannot be decoded)
    or ``ValueError`` (aspect ratio), for the loader to count.
    """
    path = Path(reference["path"]) if reference.get("bytes") is None and reference.get("path") else None
    if cache is not None:
        if path is not None:
            check_readable(path, path.stat())  # FileNotFoundError when missing; stat never blocks on a FIFO
            data_key = source_identity(path)
        else:
            data_key = hashlib.sha1(image_bytes(reference)).hexdigest()
        key = cache_key(data_key, cache.resize_key)
        hit = cache.lookup(key)
        if hit is not None:
            return hit
        return cache.build(key, image_bytes(reference), path)
    width, height = probe_image(image_bytes(reference))
    return PreparedImage(width, height, {"path": str(path), "bytes": None} if path is not None else reference, "probed")


def prepare_images(
    references: Iterable[dict], total: int, cache: ImageCache | None, workers: int, description: str
) -> Iterator[PreparedImage | OSError | ValueError]:
    """``prepare_image`` over many references in parallel threads (Pillow decodes without the GIL), in order, with a progress bar.

    Each item is the prepared image or the ``OSError``/``ValueError`` that says why it cannot be used;
    references are read ``PARALLEL_WINDOW`` at a time, so encoded bytes never pile up. The caller
    saves the cache's index (``ImageCache.save_index``) when done.
    """
    references = iter(references)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, tqdm(total=total, desc=description, unit="image") as bar:
        while window := [pool.submit(prepare_image, reference, cache) for reference in islice(references, PARALLEL_WINDOW)]:
            for future in window:
                error = future.exception()
                if error is not None and not isinstance(error, (OSError, ValueError)):
                    raise error  # a bug, not a bad image
                # Counted before it is handed over: the caller may stop at the last item without resuming this loop.
                bar.update(1)
                yield error if error is not None else future.result()


# ---------------------------------------------------------------- previews of a split, for the app

PREVIEW_FOLDER = "test_images"  # in the run folder: what ``python -m helpers.app`` shows
PREVIEW_INDEX = "index.json"  # one entry per image, in the split's (and the predictions') order
PREVIEW_MAX_SIDE_PX = 1024  # previews are for looking at; boxes stay in the original image's pixels


def write_previews(dataset, folder: str | Path, max_side_px: int = PREVIEW_MAX_SIDE_PX) -> int:
    """Each image of a split as a JPEG of at most ``max_side_px`` a side, with its original size in ``index.json``; returns the count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    columns = dataset.select_columns(["image", "image_id", "width", "height"])
    for index, example in enumerate(tqdm(columns, total=len(columns), desc="test image previews", unit="image")):
        image = open_image(example["image"])
        image.thumbnail((max_side_px, max_side_px))
        name = f"{index:05d}.jpg"
        image.save(folder / name, quality=JPEG_QUALITY)
        entries.append({"file": name, "image_id": str(example["image_id"]), "width": int(example["width"]), "height": int(example["height"])})
    (folder / PREVIEW_INDEX).write_text(json.dumps(entries, indent=1))
    return len(entries)
