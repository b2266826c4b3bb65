"""How fast does the answer parser read pathological text? Seconds per input, and the growth from 100 kB to 1 MB.

Each input is built to make a careless parser backtrack, recurse or allocate: long whitespace
inside a box, deep nesting, a million digits, unclosed strings, a million tiny objects. A parser
linear in the text's length takes about 10 times as long for 10 times the text; a quadratic one 100.

    python benchmarks/parser_speed.py             # 1 MB inputs
    python benchmarks/parser_speed.py --size 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere

from helpers.families.boxes import parse_model_answer  # noqa: E402
from helpers.families.registry import get_family

OBJECT = '{"bbox_2d": [12, 34, 56, 78], "label": "cat"},'
TAG_BOX = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(12,34),(56,78)<|box_end|>"


def _fill(head: str, unit: str, tail: str = "") -> Callable[[int], str]:
    """An input of about ``size`` characters: ``head``, ``unit`` repeated, ``tail``."""
    return lambda size: head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


PATHOLOGICAL: dict[str, Callable[[int], str]] = {
    "whitespace inside a tag box": _fill("<|box_start|>(1,2)", " ", "<|box_end|>"),
    "whitespace inside a JSON box": _fill('[{"bbox_2d": [1,', " ", "2,3,4]}]"),
    "deep list nesting": _fill("", "["),
    "deep object nesting": _fill("", '{"a":'),
    "alternating brackets": _fill("", "[{"),
    "many digits": _fill('[{"bbox_2d": [1, 2, ', "9", ', 4], "label": "a"}]'),
    "escaped quotes, unclosed": _fill("[", "\\'"),
    "unclosed strings": _fill("[", '"a'),
    "many objects": _fill("[", OBJECT, "]"),
    "many tag boxes": _fill("", TAG_BOX),
    "unclosed tags": _fill("", "<|object_ref_start|><|box_start|>(1,2),"),
    "commas": _fill("[", ","),
    "bare words": _fill("[", "a "),
}


def time_parse(text: str) -> float:
    """Seconds to parse ``text`` once (the best of two)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        parse_model_answer(text, get_family("qwen2_5_vl"), (1000, 1000), (1000, 1000))
        best = min(best, time.perf_counter() - start)
    return best


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per input")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Time every pathological input at a tenth of the size and at the size; print and return the figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = {}
    print(f"{'input':32s} {'seconds':>9s} {'x10 text':>9s}")
    for name, build in PATHOLOGICAL.items():
        small, large = time_parse(build(args.size // 10)), time_parse(build(args.size))
        results[name] = {"seconds": large, "growth": large / max(small, 1e-6)}
        print(f"{name:32s} {large:9.3f} {results[name]['growth']:8.1f}x")
    slowest = max(results, key=lambda name: results[name]["seconds"])
    print(f"slowest: {slowest}, {results[slowest]['seconds']:.3f} s for {args.size:,} characters (linear growth: about 10x)")
    return results


if __name__ == "__main__":
    main()
