"""The pipeline learns: the tiny Qwen2.5-VL, trained from random weights through the notebook, finds boxes it never saw.

A wrong label mask, a shifted label or a coordinate frame that ignores the processor's resize
still lowers the loss; none of them survives this test (the breakages tried, and what the test
reaches: README, Does it learn?). It runs the grounding preset cut to 3500 steps (about 3 minutes of
training on 2 CPU cores); the preset's 6000 steps are for Qwen2-VL.
"""

from __future__ import annotations

import json

import pytest

from helpers.evaluate.metrics import ACCURACY_50


@pytest.mark.slow
def test_grounding_preset_learns_to_locate_the_named_shape(tmp_path, capsys, load_benchmark):
    (row,) = load_benchmark("learning").main(
        ["--presets", "offline_grounding", "--families", "qwen2_5_vl", "--output-root", str(tmp_path),
         "-p", "offline_model_dir", str(tmp_path / "models"), "-p", "max_steps", "3500"]
    )
    print(capsys.readouterr().out)  # the benchmark's table, shown with -s or on failure
    assert row["task"] == "grounding" and row["test_images"] >= 64
    assert row[f"baseline_{ACCURACY_50}"] <= 0.1, "the random model must not already find the shapes"
    assert row[f"finetuned_{ACCURACY_50}"] >= 0.5, f"accuracy@0.5 {row[f'finetuned_{ACCURACY_50}']:.3f}"
    saved = json.loads((tmp_path / "learning_benchmark.json").read_text())
    assert saved == [row]
