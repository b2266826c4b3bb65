"""Small objects in big images: the tile-trained model answering each held-out image whole, and tile by tile.

Each seed trains the ``offline_large_images`` preset (tiny Qwen3-VL from random weights on 96-px tiles of
384-576 px synthetic images holding 16-40 px shapes) through the notebook, which answers the held-out large
images tile by tile (mapped back and merged). The same trained model then answers them whole (the image
shrunk to the same pixel bounds, as inference without tiles does), with an answer budget that has room for
every object (``--whole-tokens``; the notebook's own whole-image figures use the run's ``max_new_tokens``).
Prints mAP@.5, COCO's AP for small objects and mAP@[.5:.95] of both per seed, with the means; then, on the
first seed's model, times sliced evaluation with the tiles batched (``--batch-size``) against tile by tile. Figures go to
``<output-root>/slicing_benchmark.json``; the first seed's picture to ``<output-root>/sliced.png``.
Nothing is tuned on these test images.

    python benchmarks/slicing.py                       # seeds 1 and 2, then the timing (about 40 minutes on 2 cores)
    python benchmarks/slicing.py --seeds 1 --timing-images 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from learning import run_one, save_figures  # noqa: E402

from helpers.evaluate.metrics import MAP_50, MAP_50_95, MAP_SMALL, N_TILES  # noqa: E402

KEYS = (MAP_50, MAP_SMALL, MAP_50_95)
ARMS = ("whole image", "sliced")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--preset", default="offline_large_images", help="a name in params/ (no .yaml)")
    parser.add_argument("--family", default="qwen3_vl")
    parser.add_argument("--whole-tokens", type=int, default=800, help="answer budget of the whole-image arm: room for every object")
    parser.add_argument("--timing-images", type=int, default=8, help="held-out images the timing answers (0: no timing)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per generate() call in the batched arm of the timing")
    parser.add_argument("--output-root", default="outputs/benchmarks")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override for every run")
    return parser.parse_args(argv)


def format_table(rows: list[dict]) -> str:
    """Per seed and arm, then each arm's mean over the seeds."""
    lines = ["| inference | seed | mAP@.5 | AP small | mAP@[.5:.95] |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines += [f"| {arm} | {row['seed']} | " + " | ".join(f"{row[f'{arm}_{key}']:.3f}" for key in KEYS) + " |" for arm in ARMS]
    for arm in ARMS:
        means = [statistics.mean(row[f"{arm}_{key}"] for row in rows) for key in KEYS]
        lines.append(f"| **{arm}**, mean | | " + " | ".join(f"{value:.3f}" for value in means) + " |")
    return "\n".join(lines)


def held_out_split(run_dir: Path, detector):
    """The run's held-out images, generated again from its seed, with the prompt its model was trained with."""
    from helpers.data import LoadOptions, load_detection_splits, synthetic_options
    from helpers.families.chat import add_chat_columns, detection_prompt

    params = json.loads((run_dir / "params.json").read_text())["parameters"]
    options = LoadOptions(seed=params["seed"], synthetic=synthetic_options(params))
    sizes = {"train": 1, "eval": 1, "test": params["test_size"]}
    splits, _ = load_detection_splits("synthetic", {"train": "train", "eval": "eval", "test": "test"}, sizes, options)
    family, settings = detector.family, detector.settings
    test = add_chat_columns(splits["test"], family, detection_prompt(family, settings.class_names), settings.min_pixels, settings.max_pixels)
    recorded = [json.loads(line)["ground_truth"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    if [[o["bbox_xyxy_px"] for o in objects] for objects in test["objects"]] != [[o["bbox_xyxy_px"] for o in gt] for gt in recorded]:
        raise SystemExit(f"{run_dir}: the regenerated held-out images differ from the run's")
    return test


def evaluate_run(run_dir: Path, whole_tokens: int, timing_images: int, batch_size: int) -> dict:
    """The whole-image arm at an answer budget with room for every object, and the sliced evaluation timed batched and tile by tile."""
    from helpers.detect import Detector
    from helpers.evaluate.evaluation import evaluate_model
    from helpers.evaluate.generation import GenerationSettings

    detector = Detector.from_folder(run_dir)
    settings, test = detector.settings, held_out_split(run_dir, detector)
    common = dict(family=detector.family, class_names=settings.class_names, duplicate_iou=settings.duplicate_iou)
    whole = GenerationSettings(max_new_tokens=whole_tokens, batch_size=batch_size, loop_repeats=settings.loop_repeats)
    _, whole_metrics = evaluate_model(detector.model, detector.processor, test, settings=whole, **common)
    figures = {f"whole image_{key}": whole_metrics[key] for key in KEYS} | {"whole_tokens": whole_tokens}
    if not timing_images:
        return figures
    sliced = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=batch_size, loop_repeats=settings.loop_repeats)
    timings, answers = {}, {}
    for name, size in (("batched", batch_size), ("tile_by_tile", 1)):
        start = time.perf_counter()
        records, _ = evaluate_model(detector.model, detector.processor, test.select(range(timing_images)),
                                    settings=replace(sliced, batch_size=size), slicing=settings.slicing(), **common)
        timings[name] = time.perf_counter() - start
        answers[name] = [r["tile_answers"] for r in records]
    return figures | {"timing_images": timing_images, "timing_tiles": sum(len(a) for a in answers["batched"]), "batch_size": batch_size,
                      "batched_s": timings["batched"], "tile_by_tile_s": timings["tile_by_tile"],
                      "speedup": timings["tile_by_tile"] / timings["batched"], "same_answers": answers["batched"] == answers["tile_by_tile"]}


def main(argv: list[str] | None = None) -> list[dict]:
    """Train every seed, compare whole-image and sliced inference, time batching; print and save the figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = []
    for index, seed in enumerate(args.seeds):
        figures = run_one(args.preset, args.family, args.output_root, [["seed", str(seed)], *args.p], run_name=f"slicing-seed{seed}")
        run_dir = Path(figures["run_dir"])
        notebook = json.loads((run_dir / "metrics.json").read_text())
        figures |= {f"sliced_{key}": notebook["finetuned"][key] for key in KEYS} | {"tiles": notebook["finetuned"][N_TILES], "seed": seed}
        figures |= {f"notebook whole image_{key}": notebook["finetuned_whole_image"][key] for key in KEYS}
        rows.append(figures | evaluate_run(run_dir, args.whole_tokens, args.timing_images if index == 0 else 0, args.batch_size))
        print("\n".join(format_table(rows[-1:]).splitlines()[2:4]), flush=True)
    shutil.copyfile(Path(rows[0]["run_dir"]) / "plots" / "sliced.png", REPO_ROOT / args.output_root / "sliced.png")
    table = format_table(rows)
    if "speedup" in rows[0]:
        t = rows[0]
        table += (f"\n\nsliced evaluation of {t['timing_images']} images ({t['timing_tiles']} tiles): batched by {t['batch_size']} "
                  f"{t['batched_s']:.1f} s, tile by tile {t['tile_by_tile_s']:.1f} s ({t['speedup']:.2f}x); same answers: {t['same_answers']}")
    save_figures(rows, table, args.output_root, "slicing_benchmark")
    return rows


if __name__ == "__main__":
    main()
