"""Images on disk until a batch needs them: pixel values of every mode, safe reads, the downscaled cache."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from helpers.families.boxes import resized_size
from helpers.data.records import ImageLoading
from helpers.data.sources import image_cache_for, load_detection_splits
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import get_family
from helpers.data.sources import LoadOptions
from helpers.data.images import (
    ImageCache,
    NotARegularFile,
    decode_image,
    open_image,
    prepare_image,
    read_regular_file,
    to_rgb8,
    upright_size,
)



def gray(mode: str, values: list) -> Image.Image:
    """A 1-row image of ``mode`` holding ``values``."""
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    array = np.asarray([values], dtype=dtype)
    return Image.fromarray(array, mode=mode) if mode != "I;16" else Image.frombytes("I;16", (len(values), 1), array.tobytes())


@pytest.mark.parametrize(
    "mode,values,expected",
    [
        ("I;16", [0, 32768, 65535], [0, 128, 255]),  # 16-bit: scaled by 65535, not clipped at 255 (all white)
        ("I", [0, 32768, 65535], [0, 128, 255]),  # how Pillow opens 16-bit PNGs: the values say 16-bit
        ("I", [0, 100, 255], [0, 100, 255]),  # 32-bit holding 8-bit values: kept
        ("I", [0, 50000, 100000], [0, 128, 255]),  # beyond 16 bits: its own range
        ("I", [-100, 0, 100], [0, 128, 255]),  # negative: its own range
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # float in [0, 1]: scaled by 255, not all black
        ("F", [0.0, 250.0, 1000.0], [0, 64, 255]),  # float beyond [0, 1]: its own range
        ("F", [float("nan"), 0.0, 1.0], [0, 0, 255]),  # NaN reads as 0
        ("F", [3.0, 3.0, 3.0], [0, 0, 0]),  # a flat image has no range
    ],
)
def test_high_bit_depth_pixels_are_scaled_to_8_bits(mode, values, expected):
    rgb = to_rgb8(gray(mode, values))
    assert rgb.mode == "RGB"
    pixels = np.asarray(rgb)[0]
    assert pixels[:, 0].tolist() == expected
    assert (pixels == pixels[:, :1]).all()  # gray: R = G = B


@pytest.mark.parametrize(
    "image,expected",
    [
        (Image.new("P", (2, 1), 0), None),  # palette: Pillow's conversion, as before
        (Image.new("CMYK", (2, 1), (0, 255, 255, 0)), (255, 0, 0)),  # CMYK red
        (Image.new("RGBA", (2, 1), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped, colour kept
        (Image.new("LA", (2, 1), (77, 128)), (77, 77, 77)),
        (Image.new("L", (2, 1), 200), (200, 200, 200)),
        (Image.new("1", (2, 1), 1), (255, 255, 255)),
    ],
)
def test_other_modes_convert_as_pillow_does(image, expected):
    rgb = to_rgb8(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (expected if expected is not None else image.convert("RGB").getpixel((0, 0)))


@pytest.mark.parametrize("suffix,mode", [(".png", "I;16"), (".tif", "I;16"), (".tif", "F"), (".tif", "I")])
def test_high_bit_depth_files_decode_to_their_scaled_values(tmp_path, suffix, mode):
    values = {"I;16": [0, 65535], "I": [0, 65535], "F": [0.0, 1.0]}[mode]
    path = tmp_path / f"deep{suffix}"
    gray(mode, values).save(path)
    assert np.asarray(open_image(path))[0, :, 0].tolist() == [0, 255]


def jpeg_bytes(size=(60, 40), orientation: int | None = None) -> bytes:
    """A JPEG whose left half is red, with an optional EXIF orientation tag."""
    image = Image.new("RGB", size, "blue")
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    "orientation,size,red_at",
    [
        (None, (60, 40), (5, 20)),  # no tag: as stored
        (0, (60, 40), (5, 20)),  # 0 is not an orientation: as stored (it was rotated and re-encoded before)
        (1, (60, 40), (5, 20)),
        (3, (60, 40), (55, 20)),  # half a turn: red on the right
        (6, (40, 60), (20, 5)),  # a quarter turn clockwise: red on top
        (8, (40, 60), (20, 55)),  # a quarter turn counter-clockwise: red at the bottom
    ],
)
def test_exif_orientation_is_applied_only_for_2_to_8(orientation, size, red_at):
    data = jpeg_bytes(orientation=orientation)
    image = decode_image(data)
    assert image.size == size == upright_size(Image.open(io.BytesIO(data)))
    red, _, blue = image.getpixel(red_at)
    assert red > 200 and blue < 60


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = {}
    reader = threading.Thread(target=lambda: result.update(error=pytest.raises(NotARegularFile, read_regular_file, fifo)))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    for special in ("/dev/zero", tmp_path):
        with pytest.raises(NotARegularFile):
            read_regular_file(special)
    with pytest.raises(OSError, match="over the 10-byte bound"):
        (tmp_path / "big.jpg").write_bytes(b"x" * 11)
        read_regular_file(tmp_path / "big.jpg", max_bytes=10)


def big_photo(path, size=(1200, 900), orientation: int | None = None, quality=90):
    """A noisy JPEG photo, so its encoded size is photo-like."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, quality=quality, exif=exif.tobytes())
    return path


def qwen_cache(folder) -> ImageCache:
    """A cache at Qwen2-VL's input size with the tests' pixel bounds."""
    return ImageCache(folder, lambda w, h: resized_size(get_family("qwen2_vl"), w, h, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS), "qwen2_vl-test")


@pytest.mark.parametrize(
    "orientation,upright",
    [(None, (1200, 900)), (0, (1200, 900)), (1, (1200, 900)), (6, (900, 1200))],
)
def test_the_cache_holds_the_upright_image_at_the_model_input_size(tmp_path, orientation, upright):
    source = big_photo(tmp_path / "photo.jpg", orientation=orientation)
    cache = qwen_cache(tmp_path / "cache")
    built = prepare_image({"path": str(source), "bytes": None}, cache)
    cache.save_index()
    assert (built.width, built.height, built.how) == (*upright, "cache_built")
    cached = open_image(built.reference)
    assert cached.size == resized_size(get_family("qwen2_vl"), *upright, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)  # what the processor would make
    assert built.reference["path"].startswith(str(tmp_path / "cache"))
    again = prepare_image({"path": str(source), "bytes": None}, qwen_cache(tmp_path / "cache"))  # a new run reads the index
    assert (again.width, again.height, again.how, again.reference) == (*upright, "cache_hit", built.reference)
    source.write_bytes(jpeg_bytes())  # the source changed: its entry no longer applies
    assert prepare_image({"path": str(source), "bytes": None}, qwen_cache(tmp_path / "cache")).how == "cache_built"


def test_an_image_already_at_model_size_is_referenced_not_copied(tmp_path):
    source = big_photo(tmp_path / "small.jpg", size=(196, 140))  # sides already multiples of 28, area under max_pixels
    prepared = prepare_image({"path": str(source), "bytes": None}, qwen_cache(tmp_path / "cache"))
    assert prepared.reference["path"] == str(source.absolute())
    assert not list((tmp_path / "cache").glob("*.jpg"))


def test_cached_loading_keeps_boxes_in_the_original_frame(tmp_path):
    split = tmp_path / "coco" / "train"
    split.mkdir(parents=True)
    big_photo(split / "a.jpg", orientation=6)
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 900, "height": 1200}], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [100, 200, 300, 400], "category_id": 1, "iscrowd": 0}]}
    (split / "annotations.json").write_text(__import__("json").dumps(coco))
    loads = []
    for _ in range(2):
        cache = image_cache_for(tmp_path / "caches", str(tmp_path / "coco"), get_family("qwen2_vl"), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
        splits, reports = load_detection_splits(str(tmp_path / "coco"), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh", loading=ImageLoading(cache=cache)))
        loads.append((splits["train"][0], reports["train"].counts))
    (first, first_counts), (second, second_counts) = loads
    assert (first["width"], first["height"]) == (900, 1200)
    assert first["objects"] == [{"label": "cat", "bbox_xyxy_px": [100, 200, 400, 600]}]
    assert first_counts["images_cached"] == 1 and second_counts["images_from_cache"] == 1
    assert second == first
    assert open_image(first["image"]).size == resized_size(get_family("qwen2_vl"), 900, 1200, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)


def test_the_progress_bar_counts_the_last_image_too(tmp_path, capsys):
    from helpers.data.images import prepare_images

    references = []
    for index in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{index}.png")
        references.append({"path": str(tmp_path / f"{index}.png"), "bytes": None})
    prepared = prepare_images(references, 3, None, 1, "images")
    for _reference, _result in zip(range(3), prepared):  # zip stops at the last item without resuming the generator
        pass
    prepared.close()
    assert "3/3" in capsys.readouterr().err
