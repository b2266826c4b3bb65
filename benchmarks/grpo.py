"""Does GRPO after SFT beat more SFT? From the demo's SFT model, the same wall time of each, over seeds.

Both arms start from the same SFT model (the ``offline_demo`` run, made first when ``--sft-run`` holds none),
train on its training images for ``--seconds`` of wall time at the same constant learning rate, and are
evaluated on its 64 held-out test images: continued SFT (the assistant-only collator, batch 8) and GRPO (the
detection reward, ``--generations`` answers per image at temperature 1, KL weight ``--beta`` towards the SFT
model, loop control in the rollouts). A seed sets the data order and the sampling. Prints mAP@[.5:.95],
mAP@.5, mean IoU, the predicted-to-true area of matched boxes and the share of duplicate boxes per arm and
seed, the means, and the steps each arm made; figures and GRPO's reward curves go to
``<output-root>/grpo_benchmark.json`` and ``grpo_curves.png``. Nothing is tuned on the test images: the
settings were fixed before the first run.

    python benchmarks/grpo.py                                  # seeds 1 and 2, 240 s per arm (about 25 minutes with the SFT run made)
    python benchmarks/grpo.py --seconds 60 --seeds 1 --sft-run outputs/offline-demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from learning import run_one, save_figures  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from helpers.evaluate.metrics import MAP_50, MAP_50_95, MEAN_IOU, N_DUPLICATE_BOXES_DROPPED, N_PREDICTIONS  # noqa: E402

ARMS = ("continued SFT", "GRPO")
KEYS = (MAP_50_95, MAP_50, MEAN_IOU, "area_ratio", "duplicate_rate")


class StopAfter(TrainerCallback):
    """End training once ``seconds`` of wall time have passed since it began."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=240, help="wall time of each arm's training")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="both arms, constant")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--sft-run", default="outputs/benchmarks/grpo-sft", help="a finished offline_demo run folder (made when absent)")
    parser.add_argument("--output-root", default="outputs/benchmarks")
    return parser.parse_args(argv)


def box_figures(records: list[dict]) -> dict:
    """Mean predicted-to-true area of the boxes paired by the reward's assignment, and the share of predicted boxes that were duplicates."""
    from helpers.train.reward import area, paired_ious

    ratios = [area(r["predictions"][p]["bbox_xyxy_px"]) / area(r["ground_truth"][t]["bbox_xyxy_px"])
              for r in records for p, t, _iou in paired_ious(r["predictions"], r["ground_truth"]) if area(r["ground_truth"][t]["bbox_xyxy_px"]) > 0]
    return {"area_ratio": statistics.mean(ratios) if ratios else float("nan")}


def run_arm(arm: str, seed: int, sft_run: Path, args: argparse.Namespace, work: Path) -> dict:
    """Train one arm from the SFT model for the wall time, evaluate it on the held-out images; its figures."""
    import torch
    from transformers import set_seed
    from trl import GRPOConfig, SFTConfig

    from helpers.data import LoadOptions, load_detection_splits, synthetic_options
    from helpers.evaluate.evaluation import evaluate_model
    from helpers.evaluate.generation import GenerationSettings
    from helpers.families import add_chat_columns, read_family, task_prompts
    from helpers.train.config import device_defaults
    from helpers.train.export import load_trained_model
    from helpers.train.grpo import QwenVLGRPOTrainer, grpo_dataset, suppressed_token_ids
    from helpers.train.reward import DetectionReward
    from helpers.train.trainer import QwenVLSFTTrainer
    from tests.support.notebook_cells import run_tagged_cells

    params = json.loads((sft_run / "params.json").read_text())["parameters"]
    set_seed(seed)
    model, processor = load_trained_model(sft_run / "model", base_model=sft_run / "model", quantization="none", attn_implementation="sdpa",
                                          dtype=torch.float32, device="cpu")
    model.train()
    family = read_family(sft_run / "model")
    options = LoadOptions(seed=params["seed"], synthetic=synthetic_options(params))
    sizes = {"train": params["train_size"], "eval": 1, "test": params["test_size"]}
    splits, _ = load_detection_splits("synthetic", {"train": "train", "eval": "eval", "test": "test"}, sizes, options)
    class_names = sorted({o["label"] for objects in splits["train"]["objects"] for o in objects})
    for name in ("train", "test"):
        prompts = task_prompts(splits[name], family, task="detection", class_names=class_names)
        splits[name] = add_chat_columns(splits[name], family, prompts, min_pixels=params["min_pixels"], max_pixels=params["max_pixels"])
    common = dict(output_dir=str(work / f"{arm.replace(' ', '-')}-seed{seed}"), max_steps=10**6, learning_rate=args.learning_rate,
                  lr_scheduler_type="constant", warmup_steps=0, seed=seed, data_seed=seed, report_to=[], save_strategy="no",
                  eval_strategy="no", logging_steps=10, disable_tqdm=True, remove_unused_columns=False,
                  **device_defaults("cpu", torch.float32))
    if arm == "GRPO":
        config = GRPOConfig(**common, per_device_train_batch_size=args.generations, num_generations=args.generations, temperature=1.0,
                            beta=args.beta, max_completion_length=params["max_new_tokens"],
                            generation_kwargs={"suppress_tokens": suppressed_token_ids(processor.tokenizer)})
        reward = DetectionReward(family, min_pixels=params["min_pixels"], max_pixels=params["max_pixels"], duplicate_iou=params["duplicate_iou"])
        trainer = QwenVLGRPOTrainer(model=model, args=config, train_dataset=grpo_dataset(splits["train"]), processing_class=processor,
                                    reward=reward, loop_repeats=params["loop_repeats"])
    else:
        collator = run_tagged_cells("collators")["AssistantOnlyCollator"](processor, family.chat_template_kwargs)
        config = SFTConfig(**common, per_device_train_batch_size=params["per_device_train_batch_size"],
                           dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
        trainer = QwenVLSFTTrainer(model=model, args=config, train_dataset=splits["train"], data_collator=collator, processing_class=processor)
    trainer.add_callback(StopAfter(args.seconds))
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    generation = GenerationSettings(max_new_tokens=params["max_new_tokens"], batch_size=params["generation_batch_size"],
                                    loop_repeats=params["loop_repeats"])
    records, metrics = evaluate_model(trainer.model, processor, splits["test"], family=family, settings=generation, class_names=class_names,
                                      duplicate_iou=params["duplicate_iou"])
    duplicates = metrics[N_DUPLICATE_BOXES_DROPPED]
    figures = {key: metrics[key] for key in (MAP_50_95, MAP_50, MEAN_IOU)} | box_figures(records)
    figures["duplicate_rate"] = duplicates / (metrics[N_PREDICTIONS] + duplicates) if metrics[N_PREDICTIONS] + duplicates else 0.0
    curve = [(e["step"], e["reward"]) for e in trainer.state.log_history if "reward" in e]
    return figures | {"arm": arm, "seed": seed, "steps": trainer.state.global_step, "train_s": train_s, "reward_curve": curve}


def format_table(rows: list[dict]) -> str:
    """Per arm and seed, then each arm's mean over the seeds."""
    header = "| arm | seed | steps | mAP@[.5:.95] | mAP@.5 | mean IoU | area ratio | duplicate rate |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['arm']} | {r['seed']} | {r['steps']} | " + " | ".join(f"{r[key]:.3f}" for key in KEYS) + " |" for r in rows]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        means = [statistics.mean(r[key] for r in rows if r["arm"] == arm) for key in KEYS]
        lines.append(f"| **{arm}**, mean | | | " + " | ".join(f"{value:.3f}" for value in means) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> None:
    """GRPO's mean reward per logged step, one line per seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for row in rows:
        if row["reward_curve"]:
            ax.plot(*zip(*row["reward_curve"]), label=f"seed {row['seed']}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the rollouts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    """Make the SFT run when missing, run both arms for every seed; print and save the figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sft_run = REPO_ROOT / args.sft_run
    if not (sft_run / "model" / "model.safetensors").is_file():
        sft_run = Path(run_one("offline_demo", "qwen2_5_vl", args.output_root, [], run_name=Path(args.sft_run).name)["run_dir"])
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            rows.append(run_arm(arm, seed, sft_run, args, REPO_ROOT / args.output_root / "grpo-arms"))
            print(format_table(rows[-1:]).splitlines()[2], flush=True)
    plot_curves([r for r in rows if r["arm"] == "GRPO"], REPO_ROOT / args.output_root / "grpo_curves.png")
    save_figures(rows, format_table(rows), args.output_root, "grpo_benchmark")
    return rows


if __name__ == "__main__":
    main()
