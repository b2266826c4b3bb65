"""Does augmentation help? The demo preset on a small training set, with and without it, over several seeds.

Each arm trains the offline demo (detection, tiny Qwen2.5-VL from random weights) on the same
``--train-size`` synthetic images for the same number of steps, and is evaluated on the same
held-out test images; only ``augmentation`` differs. A seed sets the model's initialisation, the
synthetic splits (each drawn from its own seed, helpers.data.sources) and the augmentation draws, so
the arms of one seed are compared on the same test images. Prints mAP@.5 and mAP@[.5:.95] per arm
and seed, each arm's mean, and the difference; the figures also go to
``<output-root>/augmentation_benchmark.json``. Nothing is tuned on these test images.

    python benchmarks/augmentation.py                                   # none vs standard, seeds 1 and 2 (about 40 minutes)
    python benchmarks/augmentation.py --arms none standard --seeds 1 2 3 --train-size 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from learning import run_one, save_figures  # noqa: E402

from helpers.data.augment import AUGMENTATIONS  # noqa: E402
from helpers.evaluate.metrics import MAP_50, MAP_50_95  # noqa: E402

KEYS = (MAP_50, MAP_50_95)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(AUGMENTATIONS), choices=list(AUGMENTATIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--train-size", type=int, default=256, help="training images per run")
    parser.add_argument("--preset", default="offline_demo", help="a name in params/ (no .yaml)")
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--output-root", default="outputs/benchmarks")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override for every run")
    return parser.parse_args(argv)


def format_table(rows: list[dict]) -> str:
    """Per run, then per arm (mean over seeds), then each arm's gain over the first arm."""
    lines = ["| augmentation | seed | mAP@.5 | mAP@[.5:.95] | training |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['arm']} | {r['seed']} | {r[f'finetuned_{MAP_50}']:.3f} | {r[f'finetuned_{MAP_50_95}']:.3f} | {r['train_s']:.0f} s |"
              for r in rows]
    means = {arm: {key: statistics.mean(r[f"finetuned_{key}"] for r in rows if r["arm"] == arm) for key in KEYS}
             for arm in dict.fromkeys(r["arm"] for r in rows)}
    first = next(iter(means))
    for arm, mean in means.items():
        gain = "" if arm == first else f" ({mean[MAP_50] - means[first][MAP_50]:+.3f} mAP@.5 over {first})"
        lines.append(f"| **{arm}**, mean | | {mean[MAP_50]:.3f} | {mean[MAP_50_95]:.3f} |{gain} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every arm with every seed; print the table and save the figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            overrides = [["augmentation", arm], ["seed", str(seed)], ["train_size", str(args.train_size)], *args.p]
            run_name = f"augmentation-{arm}-seed{seed}"
            figures = run_one(args.preset, args.family, args.output_root, overrides, run_name=run_name)
            rows.append(figures | {"arm": arm, "seed": seed, "train_size": args.train_size})
            print(format_table(rows[-1:]).splitlines()[2], flush=True)
    save_figures(rows, format_table(rows), args.output_root, "augmentation_benchmark")
    return rows


if __name__ == "__main__":
    main()
