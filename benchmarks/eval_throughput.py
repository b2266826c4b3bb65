"""Evaluation throughput: batched against one-by-one greedy generation, on the offline profile.

Generates answers for the same held-out images with ``generation_batch_size`` images per call and
with one image per call, checks the answers are identical, and prints images/s for both and
their ratio, measured in one run. Run from the repository root:

    .venv/bin/python benchmarks/eval_throughput.py [--family qwen2_vl] [--images 32] [--batch-size 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import time

from offline_setup import MAX_PIXELS, MIN_PIXELS, benchmark_parser, offline_model  # noqa: I001 (sets sys.path first)

import torch

from helpers.images import open_image
from helpers.inference import generate
from helpers.synthetic import make_synthetic_dataset


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure, check and print; return images/s by mode and the ratio."""
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    model, processor, prompt = offline_model(args.family, args.model_dir)
    images = [open_image(image) for image in make_synthetic_dataset(args.images, seed=7)["image"]]
    prompts = [prompt] * len(images)

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
