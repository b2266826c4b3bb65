"""Debug tools for collators: which tokens each sample trains on, and where the tokens go.

Every token of a collated batch gets one status, in this priority:
``padding`` (attention mask 0), ``trained`` (label is not -100), ``masked-vision`` (an image or
video placeholder or delimiter), ``masked-prompt`` (everything else: system prompt, user text,
chat markers). A vision or padding token that carries a label is a bug and is counted as
``mislabelled``. Packed (padding-free) rows are split into their samples where the text
position restarts at 0.
"""

from __future__ import annotations

import torch

from helpers.families.chat import IGNORE_INDEX, vision_token_ids

STATUSES = ("trained", "masked-vision", "masked-prompt", "padding")
FOLD_REPEATS = 4  # runs of this many identical tokens print as "<token>×n"


def sample_segments(batch: dict) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of every sample: one per row, or several per packed row."""
    rows, length = batch["input_ids"].shape
    position_ids = batch.get("position_ids")
    if position_ids is None or "attention_mask" in batch:
        return [(row, 0, length) for row in range(rows)]
    text_positions = position_ids[0] if position_ids.dim() == 3 else position_ids  # (4, rows, L): row 0 is text
    segments = []
    for row in range(rows):
        starts = (text_positions[row] == 0).nonzero().flatten().tolist() + [length]
        segments += [(row, start, end) for start, end in zip(starts[:-1], starts[1:])]
    return segments


def token_statuses(batch: dict, vision_ids: set[int]) -> torch.Tensor:
    """A tensor like ``input_ids`` holding each token's index into ``STATUSES``."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    status = torch.full_like(input_ids, STATUSES.index("masked-prompt"))
    status[torch.isin(input_ids, torch.tensor(sorted(vision_ids)))] = STATUSES.index("masked-vision")
    status[labels != IGNORE_INDEX] = STATUSES.index("trained")
    if "attention_mask" in batch:
        status[batch["attention_mask"] == 0] = STATUSES.index("padding")
    return status


def count_mislabelled(batch: dict, vision_ids: set[int]) -> int:
    """Vision or padding tokens that carry a label (always a bug)."""
    labelled = batch["labels"] != IGNORE_INDEX
    wrong = labelled & torch.isin(batch["input_ids"], torch.tensor(sorted(vision_ids)))
    if "attention_mask" in batch:
        wrong |= labelled & (batch["attention_mask"] == 0)
    return int(wrong.sum())


def _runs(values: list) -> list[tuple[object, int, int]]:
    """``(value, start, end)`` for each run of equal consecutive values."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((values[start], start, i))
            start = i
    return runs


def _compact_text(token_ids: list[int], tokenizer, max_chars: int) -> str:
    """Decoded tokens with long repeats folded (``<|image_pad|>×64``), cut to ``max_chars``."""
    pieces = []
    for token, start, end in _runs(token_ids):
        text = tokenizer.decode([token], skip_special_tokens=False)
        pieces.append(text * (end - start) if end - start < FOLD_REPEATS else f"{text}×{end - start}")
    text = repr("".join(pieces))
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def describe_batch(batch: dict, tokenizer, vision_ids: set[int], max_samples: int = 2, max_chars: int = 100) -> str:
    """Each sample's tokens grouped in runs of one status, compactly, with a count per status."""
    status = token_statuses(batch, vision_ids)
    lines = []
    for index, (row, start, end) in enumerate(sample_segments(batch)[:max_samples]):
        ids = batch["input_ids"][row, start:end].tolist()
        sample_status = status[row, start:end].tolist()
        counts = {name: sample_status.count(i) for i, name in enumerate(STATUSES)}
        lines.append(f"sample {index}: {end - start} tokens, " + ", ".join(f"{n} {name}" for name, n in counts.items()))
        for value, run_start, run_end in _runs(sample_status):
            text = _compact_text(ids[run_start:run_end], tokenizer, max_chars)
            lines.append(f"  {STATUSES[value]:>13} {run_end - run_start:>4}  {text}")
    mislabelled = count_mislabelled(batch, vision_ids)
    if mislabelled:
        lines.append(f"ERROR: {mislabelled} vision or padding tokens carry labels")
    return "\n".join(lines)


class VerboseCollator:
    """Wrap a collator: print each batch's tokens with their label status, return the batch unchanged."""

    def __init__(self, collator, processor, max_samples: int = 2, max_chars: int = 100, print_fn=print):
        self.collator = collator
        self.tokenizer = processor.tokenizer
        self.vision_ids = vision_token_ids(processor.tokenizer)
        self.max_samples = max_samples
        self.max_chars = max_chars
        self.print_fn = print_fn

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        self.print_fn(describe_batch(batch, self.tokenizer, self.vision_ids, self.max_samples, self.max_chars))
        return batch


def analyze_token_distribution(collator, dataset, processor, n: int, batch_size: int = 8, print_fn=print) -> dict:
    """Count vision, prompt, trained and padding tokens over ``n`` samples collated in batches.

    Returns counts, shares of all positions, trained tokens per sample, the padding waste
    (padded positions per real token: the compute a padding-free batch would save) and mislabelled tokens; prints a small table.
    """
    vision_ids = vision_token_ids(processor.tokenizer)
    counts = dict.fromkeys(STATUSES, 0)
    n = min(n, len(dataset))
    mislabelled = 0
    for first in range(0, n, batch_size):
        batch = collator([dataset[i] for i in range(first, min(first + batch_size, n))])
        status = token_statuses(batch, vision_ids)
        for i, name in enumerate(STATUSES):
            counts[name] += int((status == i).sum())
        mislabelled += count_mislabelled(batch, vision_ids)
    total = sum(counts.values())
    result = {"n_samples": n, "batch_size": batch_size, "total": total}
    result |= {name.replace("masked-", ""): count for name, count in counts.items()}
    result |= {f"{name.replace('masked-', '')}_ratio": count / total for name, count in counts.items()}
    result["trained_per_sample"] = counts["trained"] / n
    result["padding_waste"] = counts["padding"] / max(total - counts["padding"], 1)  # padded positions per real token
    result["mislabelled"] = mislabelled
    rows = [(name.replace("masked-", "") + ("" if name in ("trained", "padding") else " (masked)"), counts[name]) for name in STATUSES]
    table = [f"{'tokens over ' + str(n) + ' samples':<26}{'count':>9}{'share':>8}"]
    table += [f"{label:<26}{count:>9}{count / total:>8.1%}" for label, count in rows]
    table.append(f"{'total':<26}{total:>9}{1:>8.0%}")
    table.append(f"trained tokens per sample: {result['trained_per_sample']:.1f}; padding waste: {result['padding_waste']:.1%}")
    if mislabelled:
        table.append(f"ERROR: {mislabelled} vision or padding tokens carry labels")
    print_fn("\n".join(table))
    return result
