"""Pictures of the run: samples with boxes, predictions against ground truth, training and PR curves, errors per class and kind."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from helpers.runtime.distributed import is_main_process
from helpers.data.augment import Augmenter, sample_seed
from helpers.data.images import open_image
from helpers.data.tiles import TileGrid
from helpers.evaluate.errors import (
    AP_50, ERROR_KINDS, IGNORED, LOCALISATION, CONFUSION, DUPLICATE, BACKGROUND, MISSED, N_GROUND_TRUTH, PRECISION, RECALL, TRUE_POSITIVE,
    ImageErrors, worst_images,
)
from helpers.evaluate.metrics import EVAL_LOSS, EVAL_MEAN_IOU, EVAL_PARSE_FAILURE_RATE, GRAD_NORM, GRAD_NORM_CLIPPED, LEARNING_RATE, LOSS

GROUND_TRUTH_COLOR = "lime"
PREDICTION_COLOR = "magenta"


def draw_boxes(ax, objects: list[dict], color: str, linestyle: str = "-") -> None:
    """Draw ``bbox_xyxy_px`` boxes with their labels (and scores, when present) on a matplotlib axis."""
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox_xyxy_px"]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5, linestyle=linestyle))
        text = obj["label"] if "score" not in obj else f"{obj['label']} {obj['score']:.2f}"
        # Ground truth is labelled above its box, predictions below theirs, so the labels do not cover each other.
        ax.text(x1, y1 if "score" not in obj else y2, text, color="black", fontsize=6, va="bottom" if "score" not in obj else "top",
                bbox={"facecolor": color, "alpha": 0.7, "pad": 1, "linewidth": 0})


def save_figure(fig: Figure, path: str | Path) -> Figure:
    """Lay out and save ``fig`` to ``path`` (its folder created; the main process only), and return it for the notebook to show."""
    fig.tight_layout()
    if not is_main_process():
        return fig
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig


def plot_image_grid(
    images: list[Image.Image],
    box_sets: list[list[tuple[list[dict], str, str]]],
    titles: list[str],
    path: str | Path,
    columns: int = 4,
    frames: list[tuple[int, int]] | None = None,
) -> Figure:
    """A grid of images, each with several ``(objects, color, linestyle)`` box sets; saved to ``path``.

    ``frames`` gives the ``(width, height)`` each image's boxes are in (default: its own size); an image
    of another size, such as a cached downscaled copy, is stretched over that frame.
    """
    frames = frames if frames is not None else [image.size for image in images]
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, boxes, title, (width, height) in zip(axes.flat, images, box_sets, titles, frames):
        ax.imshow(image, extent=(0, width, height, 0))
        for objects, color, linestyle in boxes:
            draw_boxes(ax, objects, color, linestyle)
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def first_images(dataset, n: int) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    """The first ``n`` images of a split, decoded, and the ``(width, height)`` frame their boxes are in."""
    subset = dataset.select(range(min(n, len(dataset))))
    return [open_image(value) for value in subset["image"]], list(zip(subset["width"], subset["height"]))


def plot_samples(dataset, n: int, path: str | Path) -> Figure:
    """The first ``n`` dataset images with their ground-truth boxes."""
    images, frames = first_images(dataset, n)
    subset = dataset.select(range(len(images)))
    return plot_image_grid(
        images,
        [[(objects, GROUND_TRUTH_COLOR, "-")] for objects in subset["objects"]],
        [f"#{i} {w}x{h}px" for i, (w, h) in zip(subset["image_id"], frames)],
        path,
        frames=frames,
    )


def plot_augmentations(dataset, augmenter: Augmenter, seed: int, n_images: int, path: str | Path, epochs: int = 3) -> Figure:
    """Each of the first ``n_images`` training images as loaded, then as ``epochs`` epochs augment it, with their boxes."""
    images, box_sets, titles, grid_frames = [], [], [], []
    for index in range(min(n_images, len(dataset))):
        example = dataset[index]
        images.append(open_image(example["image"]))
        box_sets.append([(example["objects"], GROUND_TRUTH_COLOR, "-")])
        titles.append(f"#{example['image_id']} as loaded, {len(example['objects'])} objects")
        grid_frames.append((example["width"], example["height"]))  # a cached copy is stretched over the record's frame
        for epoch in range(epochs):
            sample = augmenter(example, sample_seed(seed, epoch, index))
            images.append(sample.image)
            box_sets.append([(sample.objects, GROUND_TRUTH_COLOR, "-")])
            titles.append(f"epoch {epoch}: {sample.image.width}x{sample.image.height}px, {sample.counts.objects_cut} cut")
            grid_frames.append(sample.image.size)
    return plot_image_grid(images, box_sets, titles, path, columns=epochs + 1, frames=grid_frames)


def plot_stages(dataset, records_by_stage: dict[str, list[dict]], n: int, path: str | Path) -> Figure:
    """The same ``n`` test images once per stage, side by side (``{"baseline": records, "fine-tuned": records, ...}``), predictions dashed over the ground truth."""
    stages = list(records_by_stage.items())
    decoded, frames = first_images(dataset, min(n, *(len(records) for _stage, records in stages)))
    images, box_sets, titles = [], [], []
    for index, image in enumerate(decoded):
        for stage, records in stages:
            record = records[index]
            images.append(image)
            box_sets.append([(record["ground_truth"], GROUND_TRUTH_COLOR, "-"), (record["predictions"], PREDICTION_COLOR, "--")])
            titles.append(f"#{record['image_id']} {stage}: {len(record['predictions'])} pred / {len(record['ground_truth'])} gt")
    columns = len(stages) * (2 if len(stages) == 2 else 1)  # two stages: two images to a row, as before
    return plot_image_grid(images, box_sets, titles, path, columns=columns, frames=[frame for frame in frames for _ in stages])


def plot_before_after(dataset, baseline_records: list[dict], finetuned_records: list[dict], n: int, path: str | Path) -> Figure:
    """The same ``n`` test images twice, side by side: the baseline's predictions, then the fine-tuned model's (dashed), over the ground truth."""
    return plot_stages(dataset, {"baseline": baseline_records, "fine-tuned": finetuned_records}, n, path)


def plot_sliced(dataset, whole_records: list[dict], sliced_records: list[dict], grid: TileGrid, path: str | Path) -> Figure:
    """The test image with the most objects answered whole (left) and tile by tile (right: the tile grid faint, merged boxes dashed)."""
    index = max(range(len(sliced_records)), key=lambda i: len(sliced_records[i]["ground_truth"]))
    example = dataset[index]
    image, (width, height) = open_image(example["image"]), (example["width"], example["height"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4), squeeze=False)
    for ax, record, title in zip(axes.flat, (whole_records[index], sliced_records[index]), ("whole image", "tile by tile, merged")):
        ax.imshow(image, extent=(0, width, height, 0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")
        if record is sliced_records[index]:
            for x1, y1, x2, y2 in grid.windows(width, height):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=0.6, alpha=0.5))
        draw_boxes(ax, record["ground_truth"], GROUND_TRUTH_COLOR, "-")
        draw_boxes(ax, record["predictions"], PREDICTION_COLOR, "--")
        ax.set_title(f"#{record['image_id']} {title}: {len(record['predictions'])} pred / {len(record['ground_truth'])} gt", fontsize=9)
    return save_figure(fig, path)


# Panels of the training-curve figure: (title, [(log key, legend)]).
TRAINING_PANELS = (
    ("loss (answer tokens)", [(LOSS, "train"), (EVAL_LOSS, "eval")]),
    ("gradient norm", [(GRAD_NORM, "before clipping"), (GRAD_NORM_CLIPPED, "after clipping")]),
    ("held-out detection", [(EVAL_MEAN_IOU, "mean IoU"), (EVAL_PARSE_FAILURE_RATE, "parse failures")]),
    ("learning rate", [(LEARNING_RATE, "learning rate")]),
)


# Panels of the GRPO figure: (title, [(log key, legend)]); the keys are TRL's and helpers.train.grpo's.
GRPO_PANELS = (
    ("reward", [("reward", "mean"), ("reward_std", "std within a group")]),
    ("answer length (tokens)", [("completions/mean_length", "mean")]),
    ("predicted / true box area", [("reward/area_ratio", "paired boxes")]),
    ("duplicate boxes", [("reward/duplicate_rate", "share of predicted")]),
)


def plot_log_panels(log_history: list[dict], panels: tuple, path: str | Path) -> Figure:
    """One panel per ``(title, [(log key, legend)])`` of a trainer's log history, against the optimizer step."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        for key, label in series:
            points = [(entry["step"], entry[key]) for entry in log_history if entry.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_grpo_curves(log_history: list[dict], path: str | Path) -> Figure:
    """GRPO step by step: reward and its spread, answer length, predicted-to-true area, duplicate share."""
    return plot_log_panels(log_history, GRPO_PANELS, path)


def plot_training_curves(log_history: list[dict], path: str | Path) -> Figure:
    """Loss, eval loss, gradient norm, held-out IoU and learning rate against the optimizer step."""
    return plot_log_panels(log_history, TRAINING_PANELS, path)


def plot_pr_curves(curves: dict[str, dict], path: str | Path) -> Figure:
    """Precision against recall at IoU 0.5 (COCO's 101 recall points, averaged over classes) per model."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, curve in curves.items():
        if curve["recall"]:
            ax.plot(curve["recall"], curve["precision"], label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall at IoU 0.5", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    empty = [name for name, curve in curves.items() if not curve["recall"]]
    if empty:  # a model that predicted nothing has no curve: say so rather than leave the panel blank
        ax.text(0.5, 0.5, f"no predictions: {', '.join(empty)}", ha="center", va="center", fontsize=9, color="gray", transform=ax.transAxes)
    return save_figure(fig, path)


def plot_per_class(tables: dict[str, dict[str, dict]], path: str | Path) -> Figure:
    """AP@.5, precision and recall at IoU 0.5 per class, one bar per stage (``{"baseline": per_class, ...}``), worst class on top."""
    stages = list(tables)
    last = tables[stages[-1]]
    names = sorted(last, key=lambda name: (-1 if last[name][AP_50] != last[name][AP_50] else last[name][AP_50]))  # NaN (no objects) first
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.9 + 0.35 * len(names) * len(stages)), sharey=True, squeeze=False)
    height = 0.8 / len(stages)
    for ax, (key, title) in zip(axes.flat, ((AP_50, "AP@.5"), (PRECISION, "precision @ IoU .5"), (RECALL, "recall @ IoU .5"))):
        for s, stage in enumerate(stages):
            values = [tables[stage].get(name, {}).get(key) for name in names]
            values = [0.0 if v is None or v != v else v for v in values]  # no objects or no boxes: drawn as 0, named in the label
            ax.barh([i + s * height for i in range(len(names))], values, height=height, label=stage)
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks([i + height * (len(stages) - 1) / 2 for i in range(len(names))])
    axes[0, 0].set_yticklabels([f"{name} ({last[name][N_GROUND_TRUTH]} obj)" for name in names], fontsize=8)
    axes[0, -1].legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


# What each judged box is drawn in, here and in the app (names matplotlib and Pillow both know).
ERROR_COLORS = {TRUE_POSITIVE: PREDICTION_COLOR, LOCALISATION: "orange", CONFUSION: "red", DUPLICATE: "cyan", BACKGROUND: "magenta",
                MISSED: "red", IGNORED: "gray"}


def plot_error_examples(dataset, records: list[dict], judged: list[ImageErrors], path: str | Path, per_kind: int = 4) -> Figure:
    """For each error kind, the test images with most errors of that kind: ground truth, then the erring boxes (or missed objects) drawn."""
    fig, axes = plt.subplots(len(ERROR_KINDS), per_kind, figsize=(2.6 * per_kind, 2.6 * len(ERROR_KINDS)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, kind in enumerate(ERROR_KINDS):
        worst = worst_images(judged, records, kind, per_kind)
        if not worst:
            axes[row, 0].set_title(f"{kind}: none", fontsize=8, loc="left")
        for col, index in enumerate(worst):
            record, example, ax = records[index], dataset[index], axes[row, col]
            ax.imshow(open_image(example["image"]), extent=(0, example["width"], example["height"], 0))
            draw_boxes(ax, record["ground_truth"], GROUND_TRUTH_COLOR, "-")
            if kind == MISSED:
                missed = judged[index].missed([p["score"] for p in record["predictions"]])
                erring = [record["ground_truth"][g] for g in missed]
                draw_boxes(ax, erring, ERROR_COLORS[kind], ":")
            else:
                erring = [p for p, k in zip(record["predictions"], judged[index].prediction_kinds) if k == kind]
                draw_boxes(ax, erring, ERROR_COLORS[kind], "--")
            ax.set_title(f"{kind}: #{record['image_id']}, {len(erring)}", fontsize=8)
    return save_figure(fig, path)
