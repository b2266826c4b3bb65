"""Collator throughput beside the training step time, on the offline profile, and training fed by a data loader.

Prints samples/s for each of the notebook's collators and for one optimizer step of the tiny
model (forward, backward, AdamW) on the same batches, and their ratio: above 1 the collator is
faster than training, so with the data loader in the training process the collator takes
1 / (1 + ratio) of each step. Then the same training step fed by a data loader as the trainer
builds it (``EpochTaggedSplit`` and ``EpochSampler``, persistent workers, prefetch 2), with and
without augmentation, for each ``--workers`` count: samples/s and the share of the loop spent
waiting for the next batch (with 0 workers that is the collator's whole time). Run from the
repository root:

    .venv/bin/python benchmarks/collator_throughput.py [--family qwen2_vl] [--batch-size 8] [--batches 10] [--workers 0 1 2]
"""

from __future__ import annotations

import time

from offline_setup import benchmark_parser, offline_model  # noqa: I001 (sets sys.path first)

import torch

from helpers.data.augment import AUGMENTATION_COUNTS, EpochSampler, EpochTaggedSplit, augmenter_for
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
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="data-loader workers to feed training with")
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

    print(f"\ntraining fed by a data loader ({args.batches} steps after one warm-up): samples/s, and the share of the step spent waiting for data")
    print(f"{'augmentation':<14}{'workers':>8}{'samples/s':>11}{'data wait':>11}")
    for policy in ("none", "standard"):
        augmenter = augmenter_for(policy, get_family(args.family), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
        collator = cells["AssistantOnlyCollator"](processor, None, augmenter)
        for workers in args.workers:
            rate, wait_share = fed_training(train_step, collator, dataset, args.batch_size, args.batches, workers)
            results[f"fed {policy} {workers} workers"] = rate
            results[f"data wait share {policy} {workers} workers"] = wait_share
            print(f"{policy:<14}{workers:>8}{rate:>11.1f}{wait_share:>11.1%}")
    return results


def fed_training(train_step, collator, dataset, batch_size: int, steps: int, workers: int) -> tuple[float, float]:
    """Train ``steps`` steps on batches from a data loader with ``workers`` processes (as the trainer builds it); samples/s and the share spent waiting."""
    sampler = EpochSampler(len(dataset), seed=0)
    loader = torch.utils.data.DataLoader(EpochTaggedSplit(dataset, seed=0), batch_size=batch_size, sampler=sampler, collate_fn=collator,
                                         num_workers=workers, persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    batches = iter(loader)
    first = next(batches)  # workers start and the first batch is made: a one-off, not counted
    first.pop(AUGMENTATION_COUNTS, None)
    train_step(first)
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            sampler.set_epoch(sampler.epoch + 1)
            batches = iter(loader)
            batch = next(batches)
        waited += time.perf_counter() - before
        batch.pop(AUGMENTATION_COUNTS, None)  # as the trainer does
        train_step(batch)
    total = time.perf_counter() - start
    return steps * batch_size / total, waited / total


if __name__ == "__main__":
    main()
