"""The coordinate-scaling check: rebuilt model input, decoded boxes, and that it catches bad scaling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers.evaluate import scaling_check
from helpers.families.boxes import resized_size
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.processors import load_processor
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import get_family
from tests.cases import FAMILIES



@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(4, seed=3, min_side_px=60, max_side_px=300)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,height", [(100, 60), (300, 70), (250, 250)])
def test_model_input_image_is_the_processors_resize(tiny_checkpoints, family, width, height):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    seen = scaling_check.model_input_image(processor, image)
    assert seen.size == resized_size(family, width, height, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    expected = np.asarray(image.resize(seen.size, Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(np.asarray(seen, dtype=np.float64) - expected).mean() < 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_check_passes_with_errors_within_the_format_quantum(tiny_checkpoints, dataset, family, tmp_path):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    report = scaling_check.check_coordinate_scaling(dataset, processor, family, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, 3, tmp_path / "check.png")
    assert report["ok"] and len(report["examples"]) == 3
    assert (tmp_path / "check.png").stat().st_size > 0
    for example in report["examples"]:
        assert example["processor_size"] == example["model_size"]
        assert example["max_error_px"] <= example["allowed_px"]
    assert report["worst_error_px"] == max(e["max_error_px"] for e in report["examples"])


def test_check_fails_when_the_resize_is_ignored(tiny_checkpoints, dataset, tmp_path, monkeypatch):
    # A contributor who writes Qwen2.5-VL targets in original pixels: the processor's size differs.
    monkeypatch.setattr(scaling_check, "resized_size", lambda family, w, h, lo, hi: (w, h))
    processor = load_processor(tiny_checkpoints["qwen2_5_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    report = scaling_check.check_coordinate_scaling(dataset, processor, get_family("qwen2_5_vl"), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, 3, tmp_path / "c.png")
    assert not report["ok"]


def test_check_fails_when_targets_use_the_wrong_frame(tiny_checkpoints, dataset, tmp_path, monkeypatch):
    # Targets written in original pixels while evaluation reads resized pixels.
    real = scaling_check.to_model_answer
    monkeypatch.setattr(scaling_check, "to_model_answer", lambda objects, family, size, model_size: real(objects, family, size, size))
    processor = load_processor(tiny_checkpoints["qwen2_5_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    report = scaling_check.check_coordinate_scaling(dataset, processor, get_family("qwen2_5_vl"), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, 3, tmp_path / "c.png")
    assert not report["ok"] and report["worst_error_px"] > 5
