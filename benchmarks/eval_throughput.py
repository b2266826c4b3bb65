"""Evaluation throughput: batched against one-by-one greedy generation, offline or at real size.

Generates answers for the same held-out images with ``--batch-size`` images per call and with one
image per call, through ``helpers.evaluate.generation.generate`` (left padding, loop control: an answer stops once
one object has been written ``--loop-repeats`` times), and prints images/s, generated tokens and peak
GPU memory of both, and their ratio, measured in one run.

- Offline (the default): the tiny offline model in fp32 on the CPU; batched answers must equal one-by-one
  ones, or the run stops (left padding is broken).
- ``--real-size``: the published architecture (``helpers/families/hub_configs/<family>/config.json``) with random
  bf16 weights on the real vocabulary, real-size images (up to the GPU preset's max_pixels), on a GPU.
  Random weights rarely write an end-of-turn token, so both modes run to ``max_new_tokens``: the same
  work, the worst case of a model that does not stop. In bf16, batched kernels round differently from
  one-by-one ones and a random model's logits are close to ties, so answers may differ: their share of
  identical answers is printed, not required.
- ``--tiny``: the offline model with 4 images, 2 per batch, 4 new tokens (the test suite's size).

    .venv/bin/python benchmarks/eval_throughput.py [--family qwen2_vl] [--images 32] [--batch-size 8] [--max-new-tokens 64]
    python benchmarks/eval_throughput.py --real-size --family qwen2_vl --images 16 --batch-size 8 --max-new-tokens 128
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from offline_setup import (  # noqa: I001 (sets sys.path first)
    CLASSES, REAL_MAX_PIXELS, REAL_MIN_PIXELS, REAL_SIDES_PX, benchmark_parser, offline_model, real_size_checkpoint,
)

import torch
from transformers.utils import is_flash_attn_2_available

from helpers.families.registry import get_family
from helpers.families.chat import detection_prompt
from helpers.runtime.device import clear_memory, peak_memory_report, reset_peak_memory
from helpers.data.images import open_images
from helpers.evaluate.generation import LOOP_REPEATS, GenerationSettings, generate
from helpers.train.model import load_model
from tests.support.real_vocab import real_processor
from helpers.data.synthetic import make_synthetic_dataset

TINY = {"images": 4, "batch_size": 2, "max_new_tokens": 4}  # --tiny: the test suite's size


def real_size_model(family: str, model_dir: str):
    """The published architecture with random weights (bf16 on a GPU, flash-attention where installed), its real-vocabulary processor and prompt."""
    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    checkpoint = real_size_checkpoint(family, Path(model_dir) / f"real-{family}", device)
    attention = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    model = load_model(str(checkpoint), "none", attention, dtype, device)
    return model, real_processor(get_family(family), REAL_MIN_PIXELS, REAL_MAX_PIXELS), detection_prompt(get_family(family), CLASSES)


def parse_args(argv: list[str] | None):
    """The benchmark's options on top of the shared ones (family, model folder); --tiny fills in the test suite's sizes."""
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--loop-repeats", type=int, default=LOOP_REPEATS, help="stop an answer once one object is written this often (0: off)")
    parser.add_argument("--real-size", action="store_true", help="the published architecture with random weights, real-size images (a GPU)")
    parser.add_argument("--tiny", action="store_true", help=f"the offline model at the test suite's size: {TINY}")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.tiny and args.real_size:
        parser.error("--tiny and --real-size exclude each other")
    if args.tiny:
        vars(args).update(TINY)
    return args


def timed_generation(run, batch_size: int) -> tuple[dict, list[str]]:
    """One mode's figures (after a warm-up batch) and its answers."""
    run(batch_size, slice(0, batch_size))  # warm-up
    clear_memory()
    reset_peak_memory()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    generations = run(batch_size, slice(None))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    figures = {
        "images_per_s": len(generations) / seconds, "images": len(generations), "batch_size": batch_size,
        "generated_tokens": sum(len(g.token_ids) for g in generations), "loop_stopped": sum(g.loop_stopped for g in generations),
        "peak_memory_gib": peak_memory_report().get("gpu_peak_allocated_gib"),
    }
    return figures, [g.text for g in generations]


def print_results(results: dict, args) -> None:
    """The table of both modes and their ratio."""
    size = f"real-size {get_family(args.family).name} (random weights)" if args.real_size else f"offline {args.family}"
    print(f"{size}: {results['images']} images, max_new_tokens {args.max_new_tokens}, loop_repeats {args.loop_repeats}, "
          f"{results['device']}, {torch.get_num_threads()} threads")
    print(f"{'mode':<24}{'images/s':>10}{'tokens':>9}{'loop-stopped':>14}{'peak GiB':>10}")
    for name in ("batched", "one-by-one"):
        r = results[name]
        label = f"{name} ({r['batch_size']} per call)"
        memory = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"{label:<24}{r['images_per_s']:>10.2f}{r['generated_tokens']:>9}{r['loop_stopped']:>14}{memory:>10}")
    print(f"ratio                   {results['ratio']:>10.2f}x   identical answers: {results['identical_answers']:.0%}")


def main(argv: list[str] | None = None) -> dict:
    """Measure, check and print; return images/s, tokens and peak memory by mode, the ratio and the answers' agreement."""
    args = parse_args(argv)
    if args.real_size:
        model, processor, prompt = real_size_model(args.family, args.model_dir)
        low, high = REAL_SIDES_PX
        images = open_images(make_synthetic_dataset(args.images, seed=7, min_side_px=low, max_side_px=high)["image"])
    else:
        model, processor, prompt = offline_model(args.family, args.model_dir)
        images = open_images(make_synthetic_dataset(args.images, seed=7)["image"])
    prompts = [prompt] * len(images)
    options = get_family(args.family).chat_template_kwargs

    def run(batch_size: int, subset: slice) -> list:
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=batch_size, loop_repeats=args.loop_repeats)
        return generate(model, processor, images[subset], prompts[subset], settings, chat_template_kwargs=options)

    results: dict = {"family": args.family, "real_size": args.real_size, "images": len(images), "device": str(model.device)}
    answers = {}
    for name, batch_size in (("batched", args.batch_size), ("one-by-one", 1)):
        results[name], answers[name] = timed_generation(run, batch_size)
    results["ratio"] = results["batched"]["images_per_s"] / results["one-by-one"]["images_per_s"]
    results["identical_answers"] = sum(a == b for a, b in zip(answers["batched"], answers["one-by-one"])) / len(images)
    print_results(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.real_size and results["identical_answers"] < 1:
        raise SystemExit("batched and one-by-one answers differ: left padding is broken")
    return results


if __name__ == "__main__":
    main()
