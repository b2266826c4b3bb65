"""Does the offline pipeline learn? Run presets through the notebook per family; print figures and wall times.

Each (preset, family) pair is one headless notebook run (``helpers.run_notebook``, the README
demo's path): the tiny model trains from random weights on synthetic shapes and is evaluated
before and after on held-out images. The table gives the task's headline metric (grounding:
accuracy@0.5; detection: mAP@.5) before and after, mean IoU, the training time and the whole
run's wall time. Runs go to ``<output-root>/learning-<preset>-<family>/``; the figures also go to
``<output-root>/learning_benchmark.json``.

    python benchmarks/learning.py                                   # both presets, every family (about 100 minutes)
    python benchmarks/learning.py --presets offline_grounding --families qwen2_5_vl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere

from helpers.families.registry import FAMILY_NAMES  # noqa: E402
from helpers.evaluate.metrics import ACCURACY_50, MAP_50, MAP_50_95, MEAN_IOU, N_IMAGES, PARSE_FAILURE_RATE  # noqa: E402

HEADLINE = {"grounding": ACCURACY_50, "detection": MAP_50}  # the figure each task's goal is stated in


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["offline_grounding", "offline_demo"], help="names in params/ (no .yaml)")
    parser.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=list(FAMILY_NAMES))
    parser.add_argument("--output-root", default="outputs/benchmarks", help="parent folder of the benchmark's run folders")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override for every run")
    return parser.parse_args(argv)


def run_one(preset: str, family: str, output_root: str, overrides: list[list[str]], run_name: str | None = None) -> dict:
    """Run one preset on one family through the notebook (in ``output_root/run_name``); return its figures and wall time."""
    run_name = run_name or f"learning-{preset.replace('_', '-')}-{family.replace('_', '-')}"
    command = [sys.executable, "-m", "helpers.run_notebook", "--preset", str(REPO_ROOT / "params" / f"{preset}.yaml"), "--overwrite",
               "-p", "model_id", f"offline:{family}", "-p", "run_name", run_name, "-p", "output_root", output_root]
    for name, value in overrides:
        command += ["-p", name, value]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    run_dir = REPO_ROOT / output_root / run_name
    if result.returncode != 0:
        raise SystemExit(f"{preset} on {family} failed (exit {result.returncode}); see {run_dir / 'notebook.ipynb'}\n{result.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    task = json.loads((run_dir / "params.json").read_text())["parameters"]["task"]
    figures = {"preset": preset, "family": family, "task": task, "headline": HEADLINE[task], "wall_s": wall_s,
               "train_s": metrics["train"]["train_runtime"], "test_images": metrics["finetuned"][N_IMAGES], "run_dir": str(run_dir)}
    for stage in ("baseline", "finetuned"):
        for key in (ACCURACY_50, MAP_50, MAP_50_95, MEAN_IOU, PARSE_FAILURE_RATE):
            figures[f"{stage}_{key}"] = metrics[stage][key]
    return figures


def format_table(rows: list[dict]) -> str:
    """A markdown table: headline metric before and after, mean IoU, training and wall time."""
    lines = ["| preset | family | task | metric | before | after | mAP@[.5:.95] | mean IoU | test images | training | whole run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        metric = r["headline"]
        lines.append(f"| {r['preset']} | {r['family']} | {r['task']} | {metric} | {r[f'baseline_{metric}']:.3f} | "
                     f"{r[f'finetuned_{metric}']:.3f} | {r[f'finetuned_{MAP_50_95}']:.3f} | {r[f'finetuned_{MEAN_IOU}']:.3f} | "
                     f"{r['test_images']} | {r['train_s']:.0f} s | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def save_figures(rows: list[dict], table: str, output_root: str, name: str) -> Path:
    """Print the table and write the figures to ``<output_root>/<name>.json``."""
    print(table)
    summary = REPO_ROOT / output_root / f"{name}.json"
    summary.write_text(json.dumps(rows, indent=2))
    print(f"figures: {summary}")
    return summary


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every preset on every family; print the table and save the figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = []
    for preset in args.presets:
        for family in args.families:
            rows.append(run_one(preset, family, args.output_root, args.p))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    save_figures(rows, format_table(rows), args.output_root, "learning_benchmark")
    return rows


if __name__ == "__main__":
    main()
