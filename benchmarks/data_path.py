"""The data path at real size: samples/s one data-loader worker prepares, against the samples/s a GPU trains on.

At the Qwen2-VL-2B GPU preset's pixel bounds and batch size (``params/qwen2_vl_2b_gpu.yaml``), for each
family whose published architecture is kept (``helpers/families/hub_configs``: Qwen2-VL-2B, Qwen2.5-VL-3B,
Qwen3-VL-2B), ``--n`` phone-size photos (4000x3000 JPEG, written once by ``data_loading.write_coco_folder``)
are loaded as the notebook loads them, then batched by the notebook's assistant-only collator in one
process, which is what one worker does:
- with the image cache (each photo downscaled once to ``max_pixels``) and without it (each photo decoded
  at full size at every step);
- with augmentation "none" and "standard".

The GPU side is arithmetic: the notebook's recipe on a GPU (LoRA rank from the notebook on the
language model, activation checkpointing, padded batches) costs ``speed_accounting.training_flops``
per sample on the published architecture, so a GPU at ``--mfu`` of its bf16 peak (``--gpu``, default
H100) trains ``mfu * peak / FLOPs`` samples/s. Workers needed: that rate over one worker's. Run from
the repository root:

    .venv/bin/python benchmarks/data_path.py [--n 16] [--gpu H100] [--mfu 0.4]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from offline_setup import CLASSES, REPO_ROOT  # noqa: I001 (sets sys.path first)
import speed_accounting as acc
from data_loading import PHOTO_SIZE_PX, write_coco_folder
from train_throughput import answer_span_fn

import yaml

from helpers.data.augment import AUGMENTATION_COUNTS, EpochTaggedSplit, augmenter_for
from helpers.data.records import ImageLoading
from helpers.data.sources import IMAGE_CACHE_FOLDER, LoadOptions, image_cache_for, load_detection_splits
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.families.registry import get_family
from helpers.train.lora import lora_config
from tests.support.notebook_cells import run_tagged_cells
from tests.support.real_vocab import real_processor

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # those with a published config.json kept (the GPU side needs it)
PRESET = yaml.safe_load((REPO_ROOT / "params" / "qwen2_vl_2b_gpu.yaml").read_text())
BOUNDS = (PRESET["min_pixels"], PRESET["max_pixels"])
BATCH_SIZE = PRESET["per_device_train_batch_size"]


def worker_rate(collator, examples: list[dict], batch_size: int) -> float:
    """Samples/s of one process decoding, augmenting and collating ``examples`` in batches (after one warm-up batch)."""
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    collator(batches[0])
    start = time.perf_counter()
    for batch in batches:
        collator(batch).pop(AUGMENTATION_COUNTS, None)
    return len(examples) / (time.perf_counter() - start)


def gpu_rate(family: str, processor, examples: list[dict], bounds: tuple[int, int], batch_size: int, cells: dict, notebook: dict,
             peak_tflops: float, mfu: float) -> tuple[float, float]:
    """FLOPs per sample of the notebook's GPU recipe on these examples, and the samples/s a GPU trains at ``mfu`` of ``peak_tflops``."""
    meta = acc.meta_model(acc.real_size_config(family))
    record = get_family(family)
    answer_span = answer_span_fn(processor, cells, record.chat_template_kwargs)
    samples = [acc.sample_tokens(processor, ex, family, *bounds, answer_span) for ex in examples]
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    targets = lora_config(record, targets=["language"], rank=notebook["lora_rank"], alpha=notebook["lora_alpha"], dropout=0.0).target_modules
    lora = acc.lora_parameters(meta, targets, notebook["lora_rank"])
    flops = acc.training_flops(acc.architecture(meta), batches, acc.padded_spans(batches), lora, checkpointing=True)["total"]
    return flops, mfu * peak_tflops * 1e12 / flops


def measure_family(family: str, source: Path, cache_root: Path, args: argparse.Namespace, cells: dict, notebook: dict) -> list[dict]:
    """One family's rows: per-worker samples/s for cache x augmentation, and the GPU's rate."""
    record = get_family(family)
    processor = real_processor(record, *BOUNDS)
    rows, gpu = [], None
    for cached in (True, False):
        cache = image_cache_for(cache_root, str(source), record, *BOUNDS) if cached else None
        splits, _ = load_detection_splits(str(source), {"train": "train"}, {"train": 0},
                                          LoadOptions(bbox_format="xywh", loading=ImageLoading(cache=cache)))
        split = add_chat_columns(splits["train"], record, detection_prompt(record, CLASSES[:2]), *BOUNDS)
        if gpu is None:
            gpu = gpu_rate(family, processor, list(split), BOUNDS, BATCH_SIZE, cells, notebook, acc.PEAK_BF16_TFLOPS[args.gpu], args.mfu)
        for policy in ("none", "standard"):
            examples = list(EpochTaggedSplit(split, seed=0)) if policy != "none" else list(split)
            collator = cells["AssistantOnlyCollator"](processor, record.chat_template_kwargs, augmenter_for(policy, record, *BOUNDS))
            rate = worker_rate(collator, examples, BATCH_SIZE)
            rows.append({"family": record.name, "cache": cached, "augmentation": policy, "worker_samples_per_s": rate,
                         "gpu_samples_per_s": gpu[1], "flops_per_sample": gpu[0], "workers_needed": math.ceil(gpu[1] / rate)})
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    """One markdown table row."""
    return (f"| {row['family']} | {'cached' if row['cache'] else 'full-size decode'} | {row['augmentation']} | "
            f"{row['worker_samples_per_s']:.1f} | {row['gpu_samples_per_s']:.1f} | {row['workers_needed']} |")


def main(argv: list[str] | None = None) -> list[dict]:
    """Write the photos once, measure every family, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="photos (JPEG, --photo-size)")
    parser.add_argument("--gpu", default="H100", choices=list(acc.PEAK_BF16_TFLOPS), help="whose bf16 peak the GPU side uses")
    parser.add_argument("--mfu", type=float, default=0.4, help="the share of that peak training reaches")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--folder", default="outputs/.bench_photos", help="where the photos and their cache go")
    parser.add_argument("--photo-size", default="x".join(map(str, PHOTO_SIZE_PX)), help="WIDTHxHEIGHT of the stored photos")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    size_px = tuple(int(v) for v in args.photo_size.split("x"))
    source = write_coco_folder(folder, args.n, size_px)
    cells, notebook = run_tagged_cells("collators"), run_tagged_cells("parameters")
    print(f"{args.n} photos {args.photo_size}, pixels {BOUNDS[0]}..{BOUNDS[1]}, batch {BATCH_SIZE}; "
          f"GPU: {args.gpu} at {args.mfu:.0%} of {acc.PEAK_BF16_TFLOPS[args.gpu]} bf16 TFLOP/s")
    print("| model | images | augmentation | samples/s per worker | GPU samples/s | workers needed |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for family in args.families:
        rows += measure_family(family, source, folder / IMAGE_CACHE_FOLDER, args, cells, notebook)
    return rows


if __name__ == "__main__":
    main()
