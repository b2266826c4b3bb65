"""Collator throughput beside the training step time, on the offline profile.

Prints samples/s for each of the notebook's collators and for one optimizer step of the tiny
model (forward, backward, AdamW) on the same batches, and their ratio: above 1 the collator is
faster than training, so with the data loader in the training process the collator takes
1 / (1 + ratio) of each step. Run from the repository root:

    .venv/bin/python benchmarks/collator_throughput.py [--family qwen2_vl] [--batch-size 8] [--batches 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import torch  # noqa: E402
from transformers import AutoModelForImageTextToText, set_seed  # noqa: E402

from helpers.formatting import add_chat_columns, detection_prompt  # noqa: E402
from helpers.notebook_cells import run_tagged_cells  # noqa: E402
from helpers.offline import build_tiny_checkpoint  # noqa: E402
from helpers.processing import load_processor  # noqa: E402
from helpers.synthetic import make_synthetic_dataset  # noqa: E402

MIN_PIXELS, MAX_PIXELS = 3136, 50176  # the offline demo's bounds


def samples_per_second(step, inputs: list, n_samples: int) -> float:
    """Run ``step`` on every input after one warm-up call; return ``n_samples`` per second."""
    step(inputs[0])
    start = time.perf_counter()
    for item in inputs:
        step(item)
    return n_samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure and print the throughputs; return them by name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--model-dir", default="outputs/.offline_models", help="cache of the offline checkpoints")
    args = parser.parse_args(argv)

    set_seed(0)
    checkpoint = build_tiny_checkpoint(args.family, Path(args.model_dir) / args.family)
    processor = load_processor(checkpoint, MIN_PIXELS, MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="sdpa").train()
    dataset = make_synthetic_dataset(args.batch_size * args.batches, seed=1)
    dataset = add_chat_columns(dataset, args.family, detection_prompt(args.family, ["red circle", "green square", "blue triangle"]),
                               MIN_PIXELS, MAX_PIXELS)
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
