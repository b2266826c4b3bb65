"""Collator throughput beside the training step time, on the offline profile.

Prints samples/s for each of the notebook's collators and for one optimizer step of the tiny
model (forward, backward, AdamW) on the same batches, and their ratio: above 1 the collator is
faster than training, so with the data loader in the training process the collator takes
1 / (1 + ratio) of each step. Run from the repository root:

    .venv/bin/python benchmarks/collator_throughput.py [--family qwen2_vl] [--batch-size 8] [--batches 10]
"""

from __future__ import annotations

import time

from offline_setup import benchmark_parser, offline_model  # noqa: I001 (sets sys.path first)

import torch

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import add_chat_columns
from tests.support.notebook_cells import run_tagged_cells
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import get_family


def samples_per_second(step, inputs: list, n_samples: int) -> float:
    """Run ``step`` on every input after one warm-up call; return ``n_samples`` per second."""
    step(inputs[0])
    start = time.perf_counter()
    for item in inputs:
        step(item)
    return n_samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure and print the throughputs; return them by name."""
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)

    model, processor, prompt = offline_model(args.family, args.model_dir)
    model.train()
    images = make_synthetic_dataset(args.batch_size * args.batches, seed=1)
    dataset = add_chat_columns(images, get_family(args.family), prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    examples = [dataset[i] for i in range(len(dataset))]
    batches = [examples[i : i + args.batch_size] for i in range(0, len(examples), args.batch_size)]

    cells = run_tagged_cells("collators")
    collators = {
        "vision+padding masking": cells["VisionAndPaddingMaskingCollator"](processor),
        "assistant-only": cells["AssistantOnlyCollator"](processor),
        "padding-free": cells["PaddingFreeCollator"](processor, model.model.get_rope_index),
    }
    results = {name: samples_per_second(collator, batches, len(examples)) for name, collator in collators.items()}

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(inputs: dict) -> None:
        optimizer.zero_grad()
        model(**inputs, use_cache=False).loss.backward()
        optimizer.step()

    collated = [collators["assistant-only"](batch) for batch in batches]
    results["training step"] = samples_per_second(train_step, collated, len(examples))
    print(f"offline {args.family}, batch {args.batch_size}, {args.batches} batches, {torch.get_num_threads()} threads")
    print(f"{'':<24}{'samples/s':>10}{'vs training':>13}")
    for name, rate in results.items():
        print(f"{name:<24}{rate:>10.1f}{rate / results['training step']:>12.1f}x")
    return results


if __name__ == "__main__":
    main()
