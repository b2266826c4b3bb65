"""Evaluation throughput: batched against one-by-one greedy generation, on the offline profile.

Generates answers for the same held-out images with ``generation_batch_size`` images per call and
with one image per call, checks the answers are identical, and prints images/s for both and
their ratio, measured in one run. Run from the repository root:

    .venv/bin/python benchmarks/eval_throughput.py [--family qwen2_vl] [--images 32] [--batch-size 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import torch  # noqa: E402
from transformers import AutoModelForImageTextToText, set_seed  # noqa: E402

from helpers.formatting import detection_prompt  # noqa: E402
from helpers.inference import generate  # noqa: E402
from helpers.offline import build_tiny_checkpoint  # noqa: E402
from helpers.processing import load_processor  # noqa: E402
from helpers.synthetic import make_synthetic_dataset  # noqa: E402

MIN_PIXELS, MAX_PIXELS = 3136, 50176  # the offline demo's bounds


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure, check and print; return images/s by mode and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model-dir", default="outputs/.offline_models", help="cache of the offline checkpoints")
    args = parser.parse_args(argv)

    set_seed(0)
    checkpoint = build_tiny_checkpoint(args.family, Path(args.model_dir) / args.family)
    processor = load_processor(checkpoint, MIN_PIXELS, MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    images = [image.convert("RGB") for image in make_synthetic_dataset(args.images, seed=7)["image"]]
    prompts = [detection_prompt(args.family, ["red circle", "green square", "blue triangle"])] * len(images)

    results, answers = {}, {}
    for name, batch_size in (("batched", args.batch_size), ("one-by-one", 1)):
        generate(model, processor, images[:batch_size], prompts[:batch_size], args.max_new_tokens, batch_size)  # warm-up
        start = time.perf_counter()
        answers[name] = [g.text for g in generate(model, processor, images, prompts, args.max_new_tokens, batch_size)]
        results[name] = len(images) / (time.perf_counter() - start)
    results["ratio"] = results["batched"] / results["one-by-one"]
    same = answers["batched"] == answers["one-by-one"]
    print(f"offline {args.family}: {args.images} images, max_new_tokens {args.max_new_tokens}, {torch.get_num_threads()} threads")
    print(f"batched ({args.batch_size} per call)  {results['batched']:8.1f} images/s")
    print(f"one-by-one             {results['one-by-one']:8.1f} images/s")
    print(f"ratio                  {results['ratio']:8.2f}x   identical answers: {same}")
    if not same:
        raise SystemExit("batched and one-by-one answers differ: left padding is broken")
    return results


if __name__ == "__main__":
    main()
