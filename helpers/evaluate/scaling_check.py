"""Coordinate-scaling check: do the target boxes land on the objects in the image the model sees?

For a few examples it rebuilds the resized image from the processor's own ``pixel_values`` (so the
check uses the processor's real resize, not our prediction of it), draws the boxes decoded from
the target text on it next to the original image with its ground truth, and measures the worst
round-trip error in original pixels. It fails loudly when the processor's size differs from
``helpers.families.boxes.resized_size`` or an error exceeds the format's quantum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers.families.boxes import NORM_SCALE, parse_model_answer, resized_size, sort_objects, to_model_answer
from helpers.families.registry import Family
from helpers.data.images import open_image
from helpers.evaluate.plotting import GROUND_TRUTH_COLOR, PREDICTION_COLOR, plot_image_grid


def model_input_image(processor, image: Image.Image) -> Image.Image:
    """The resized RGB image the model sees, rebuilt from the image processor's patches."""
    image_processor = processor.image_processor
    out = image_processor(images=[image.convert("RGB")], return_tensors="np")
    _, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
    patch, merge, temporal = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    # Patches are laid out (grid_h/m, grid_w/m, m, m, C, temporal, p, p): invert Qwen2-VL's patchify.
    patches = np.asarray(out["pixel_values"]).reshape(grid_h // merge, grid_w // merge, merge, merge, 3, temporal, patch, patch)
    chw = patches[:, :, :, :, :, 0].transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, grid_h * patch, grid_w * patch)
    mean = np.asarray(image_processor.image_mean).reshape(3, 1, 1)
    std = np.asarray(image_processor.image_std).reshape(3, 1, 1)
    rgb = (chw * std + mean) * 255.0  # undo rescale (1/255) and normalisation
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def quantum_px(family: Family, image_size: tuple[int, int], model_size: tuple[int, int]) -> float:
    """The largest original-pixel step of one unit of the family's answer coordinates."""
    width, height = image_size
    if family.relative:
        return max(width, height) / NORM_SCALE
    return max(width / model_size[0], height / model_size[1])


def check_coordinate_scaling(
    dataset, processor, family: Family, min_pixels: int, max_pixels: int, n_examples: int, path: str | Path
) -> dict:
    """Compare ground truth with boxes decoded from the target text for ``n_examples`` images of a split (or a list of its rows).

    Returns ``{"worst_error_px", "ok", "examples": [...]}`` and saves a picture to ``path``: each
    row is the original image with its ground truth and the model's input with the decoded boxes.
    """
    images, box_sets, titles, examples, frames = [], [], [], [], []
    rows = dataset.select(range(min(n_examples, len(dataset)))) if hasattr(dataset, "select") else dataset[:n_examples]  # a split or rows
    for example in rows:
        image_size = (example["width"], example["height"])
        model_size = resized_size(family, *image_size, min_pixels, max_pixels)
        original = open_image(example["image"])  # the image as loaded (a cached copy is already at the model's size)
        seen = model_input_image(processor, original)
        answer = to_model_answer(example["objects"], family, image_size, model_size)
        decoded = parse_model_answer(answer, family, image_size, model_size)
        # Parsing as if the image were already the model's input gives the boxes in that frame.
        decoded_on_input = parse_model_answer(answer, family, model_size, model_size)
        truth = sort_objects(example["objects"])  # the order answers are written in
        errors = [abs(a - b) for got, want in zip(decoded, truth) for a, b in zip(got["bbox_xyxy_px"], want["bbox_xyxy_px"])]
        error_px = max(errors, default=0.0)
        allowed_px = quantum_px(family, image_size, model_size)
        examples.append(
            {
                "image_id": example["image_id"],
                "image_size": list(image_size),
                "model_size": list(model_size),
                "processor_size": list(seen.size),
                "n_boxes": len(truth),
                "n_decoded": len(decoded),
                "max_error_px": error_px,
                "allowed_px": allowed_px,
            }
        )
        images += [original, seen]
        frames += [image_size, seen.size]
        box_sets += [[(truth, GROUND_TRUTH_COLOR, "-")], [(decoded_on_input, PREDICTION_COLOR, "--")]]
        titles += [f"#{example['image_id']} original {image_size[0]}x{image_size[1]}px",
                   f"model input {seen.size[0]}x{seen.size[1]}px, error {error_px:.2f}px"]
    plot_image_grid(images, box_sets, titles, path, columns=2, frames=frames)
    ok = all(
        e["processor_size"] == e["model_size"] and e["n_decoded"] == e["n_boxes"] and e["max_error_px"] <= e["allowed_px"] + 1e-6
        for e in examples
    )
    return {"worst_error_px": max((e["max_error_px"] for e in examples), default=0.0), "ok": ok, "examples": examples}


def scaling_summary(scaling: dict) -> str:
    """One line per checked image; raises ``RuntimeError`` when a box does not survive the round trip, before wrong boxes are taught."""
    lines = [
        f"image {item['image_id']}: {item['image_size']} px -> model input {item['processor_size']} px, "
        f"worst error {item['max_error_px']:.2f} px (one format unit: {item['allowed_px']:.2f} px)"
        for item in scaling["examples"]
    ]
    if not scaling["ok"]:
        raise RuntimeError("coordinate-scaling check failed:\n" + "\n".join(lines))
    return "\n".join(lines)
