"""The small helpers that keep the notebook's cells short: each does what the cell used to spell out."""

from __future__ import annotations

import math
from typing import Annotated

import pytest
import torch
from transformers import AutoTokenizer

from helpers.families.chat import answer_budget_report
from helpers.runtime.device import release_model
from helpers.parameters import AT_LEAST_1, notebook_parameters, parameter_table
from helpers.evaluate.scaling_check import scaling_summary
from helpers.data.synthetic import SYNTHETIC_PARAMETERS, make_synthetic_dataset, synthetic_options


def test_notebook_parameters_reads_the_declared_names_and_checks_them():
    namespace = {"__annotations__": {"steps": Annotated[int, AT_LEAST_1], "name": str}, "steps": 3, "name": "x", "derived": 9}
    assert notebook_parameters(namespace) == {"steps": 3, "name": "x"}
    with pytest.raises(ValueError, match="steps"):
        notebook_parameters(namespace | {"steps": 0})


def test_parameter_table_is_compact_and_complete():
    params = {f"knob_{i}": i for i in range(10)} | {"long_list": list(range(100))}
    table = parameter_table(params, columns=2)
    assert len(table.splitlines()) == 6  # 11 values, two to a line
    assert all(name in table for name in params) and "..." in table


def test_synthetic_options_map_every_synthetic_parameter():
    params = {"synthetic_classes": ["red circle"], "synthetic_min_side_px": 64, "synthetic_max_side_px": 96, "synthetic_max_objects": 2,
              "synthetic_position_tint": True, "synthetic_square_images": False, "synthetic_empty_fraction": 0.0,
              "synthetic_object_px": [], "seed": 1}
    options = synthetic_options(params)
    assert set(options) == set(SYNTHETIC_PARAMETERS.values())
    assert len(make_synthetic_dataset(2, seed=0, **options)) == 2  # every key is an argument of the generator


def test_scaling_summary_stops_the_run_on_a_failed_round_trip():
    item = {"image_id": "0", "image_size": [100, 80], "processor_size": [112, 84], "max_error_px": 0.5, "allowed_px": 1.0}
    assert "worst error 0.50 px" in scaling_summary({"ok": True, "examples": [item]})
    with pytest.raises(RuntimeError, match="coordinate-scaling check failed"):
        scaling_summary({"ok": False, "examples": [item]})


def test_answer_budget_report_counts_the_answers_that_would_be_cut(tiny_checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints["qwen2_vl"])
    answers = ["short", "a much longer answer " * 20]
    lengths = [len(tokenizer(a, add_special_tokens=False).input_ids) + 1 for a in answers]
    assert "WARNING" not in answer_budget_report(tokenizer, answers, max(lengths))
    assert "1 of 2 answers exceed max_new_tokens" in answer_budget_report(tokenizer, answers, max(lengths) - 1)


def test_release_model_frees_the_weights_while_others_still_refer_to_them():
    model = torch.nn.Linear(256, 256)
    holder = {"model": model}  # a trainer or a collator holding on
    release_model(model)
    assert holder["model"].weight.device.type == "meta" and math.prod(holder["model"].weight.shape) == 256 * 256


def test_before_and_after_are_drawn_on_the_same_images(tmp_path):
    from helpers.evaluate.plotting import plot_before_after

    data = make_synthetic_dataset(2, seed=3)
    records = [{"image_id": i, "ground_truth": objects, "predictions": []} for i, objects in zip(data["image_id"], data["objects"])]
    after = [r | {"predictions": [o | {"score": 0.9} for o in r["ground_truth"]]} for r in records]
    figure = plot_before_after(data, records, after, 2, tmp_path / "predictions.png")
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["#0 baseline: 0 pred / %d gt" % len(records[0]["ground_truth"]), "#0 fine-tuned: %d pred / %d gt" % ((len(records[0]["ground_truth"]),) * 2),
                      "#1 baseline: 0 pred / %d gt" % len(records[1]["ground_truth"]), "#1 fine-tuned: %d pred / %d gt" % ((len(records[1]["ground_truth"]),) * 2)]
    shown = [ax.images[0].get_array() for ax in figure.axes if ax.images]
    assert (shown[0] == shown[1]).all() and (shown[2] == shown[3]).all()  # each pair is one image
    assert (tmp_path / "predictions.png").is_file()
