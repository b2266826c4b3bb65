"""Loading real-size photos: peak memory against the number of images, and how fast a cached photo is ready.

Writes N and 4N phone-size photos (4000x3000 JPEG, EXIF orientations 0, 1 and 6, in turn) as a COCO
folder, then in a fresh process for each count loads them as the notebook does (references, checked
and cached downscaled at Qwen2-VL's default ``max_pixels`` in parallel) and feeds the notebook's
assistant-only collator one batch. Prints images/s of the first load (cache built) and the second
(cache read), peak RSS for each count and its 4N/N ratio, and the time to make one cached 12 MP photo
ready for the collator. Goals: peak RSS at 4N within 1.2x of N; a cached photo ready in under 100 ms.
Run from the repository root:

    .venv/bin/python benchmarks/data_loading.py [--n 8] [--batch-size 4] [--folder outputs/.bench_photos]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from offline_setup import CLASSES, benchmark_parser  # noqa: I001 (sets sys.path first)

import numpy as np
from PIL import Image

from helpers.data.sources import IMAGE_CACHE_FOLDER, image_cache_for, load_detection_splits
from helpers.data.records import ImageLoading
from helpers.families.processors import QWEN2_VL_MAX_PIXELS, QWEN2_VL_MIN_PIXELS
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.data.images import open_image
from tests.support.notebook_cells import run_tagged_cells
from helpers.offline import build_tiny_checkpoint
from helpers.families.processors import load_processor
from helpers.data.sources import LoadOptions
from helpers.families.registry import get_family

PHOTO_SIZE_PX = (4000, 3000)  # a 12 MP phone photo as stored
ORIENTATIONS = (0, 1, 6)  # 0: a tag some phones write that means upright; 6: stored sideways


def write_photo(path: Path, index: int, orientation: int, size_px: tuple[int, int] = PHOTO_SIZE_PX) -> tuple[int, int]:
    """A smooth photo-like JPEG with mild noise (a few MB at 12 MP, as phones write) and its upright size."""
    width, height = size_px
    rng = np.random.default_rng(index)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    base = np.stack([200 * x + 30 * y, 150 * y + 40 * x * (index % 3), 120 * (1 - x) + 60 * y], axis=-1)
    pixels = np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=92, exif=exif.tobytes())
    return (height, width) if orientation == 6 else (width, height)


def write_coco_folder(folder: Path, n_images: int, size_px: tuple[int, int] = PHOTO_SIZE_PX) -> Path:
    """A COCO folder of ``n_images`` photos with two boxes each (made once, reused)."""
    split = folder / f"photos_{n_images}_{size_px[0]}x{size_px[1]}" / "train"
    annotation_file = split / "annotations.json"
    if annotation_file.is_file():
        return split.parent
    split.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(n_images):
        width, height = write_photo(split / f"{index}.jpg", index, ORIENTATIONS[index % len(ORIENTATIONS)], size_px)
        images.append({"id": index, "file_name": f"{index}.jpg", "width": width, "height": height})
        for k, (x, y) in enumerate(((0.1, 0.2), (0.5, 0.4))):
            annotations.append({"id": len(annotations), "image_id": index, "category_id": k + 1, "iscrowd": 0,
                                "bbox": [x * width, y * height, 0.3 * width, 0.3 * height]})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES[:2])]
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return split.parent


def measure(source: Path, cache_root: Path, model_dir: Path, family: str, batch_size: int) -> dict:
    """Load twice (cache built, then read), time a cached photo's decode, collate one batch; figures for this process."""
    processor = load_processor(build_tiny_checkpoint(get_family(family), model_dir / family), QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS)
    figures = {}
    for name in ("first_load", "second_load"):
        cache = image_cache_for(cache_root, str(source), get_family(family), QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS)
        start = time.perf_counter()
        splits, reports = load_detection_splits(str(source), {"train": "train"}, {"train": 0}, LoadOptions(bbox_format="xywh", loading=ImageLoading(cache=cache)))
        figures[f"{name}_images_per_s"] = len(splits["train"]) / (time.perf_counter() - start)
        figures[f"{name}_counts"] = {k: v for k, v in reports["train"].counts.items() if k.startswith("images")}
    train = splits["train"]
    decode_ms = []
    for reference in train.select(range(min(12, len(train))))["image"]:
        start = time.perf_counter()
        open_image(reference)
        decode_ms.append(1000 * (time.perf_counter() - start))
    figures["cached_photo_ready_ms"] = float(np.median(decode_ms))
    collator = run_tagged_cells("collators")["AssistantOnlyCollator"](processor)
    prompt = detection_prompt(get_family(family), CLASSES[:2])
    batch = add_chat_columns(train.select(range(batch_size)), get_family(family), prompt, QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS)
    start = time.perf_counter()
    collated = collator([batch[i] for i in range(batch_size)])
    figures["collate_batch_s"] = time.perf_counter() - start
    figures["batch_tokens"] = int(collated["input_ids"].numel())
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    figures["images"] = len(train)
    return figures


def main(argv: list[str] | None = None) -> dict:
    """Make the photos, measure N and 4N in fresh processes, print the table and the ratio."""
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="photos in the small set; the large one has 4x")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--folder", default="outputs/.bench_photos", help="where the photos and their cache go")
    parser.add_argument("--photo-size", default="x".join(map(str, PHOTO_SIZE_PX)), help="WIDTHxHEIGHT of the stored photos")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one source in this process
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    size_px = tuple(int(v) for v in args.photo_size.split("x"))
    if args.child:
        print(json.dumps(measure(Path(args.child), folder / IMAGE_CACHE_FOLDER, Path(args.model_dir), args.family, args.batch_size)))
        return {}
    results = {}
    for n_images in (args.n, 4 * args.n):
        source = write_coco_folder(folder, n_images, size_px)
        command = [sys.executable, __file__, "--child", str(source), "--folder", str(folder), "--model-dir", args.model_dir,
                   "--family", args.family, "--batch-size", str(args.batch_size)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[n_images] = json.loads(output.strip().splitlines()[-1])
    small, large = results[args.n], results[4 * args.n]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(f"{size_px[0]}x{size_px[1]} JPEG photos (EXIF {ORIENTATIONS}), {args.family}, max_pixels {QWEN2_VL_MAX_PIXELS}")
    print(f"{'photos':>8}{'1st load img/s':>16}{'2nd load img/s':>16}{'peak RSS MiB':>14}{'cached ready ms':>17}{'collate s':>11}")
    for n_images, r in results.items():
        print(f"{n_images:>8}{r['first_load_images_per_s']:>16.1f}{r['second_load_images_per_s']:>16.1f}{r['peak_rss_mib']:>14.0f}"
              f"{r['cached_photo_ready_ms']:>17.1f}{r['collate_batch_s']:>11.2f}")
    print(f"peak RSS {4 * args.n} / {args.n} photos: {ratio:.2f}x (goal <= 1.2x); "
          f"cached photo ready: {large['cached_photo_ready_ms']:.1f} ms (goal < 100 ms)")
    return {"results": results, "rss_ratio": ratio}


if __name__ == "__main__":
    main()
