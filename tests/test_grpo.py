"""The GRPO stage: rollout data, loop control in rollouts, suppressed tokens, and a few steps end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.chat import add_chat_columns, detection_prompt, vision_token_ids
from helpers.families.processors import load_processor
from helpers.families.registry import get_family
from helpers.train.grpo import EndTurnAfterLoop, grpo_dataset, suppressed_token_ids


def test_rollout_rows_hold_the_user_turn_the_decoded_image_and_the_true_boxes():
    family = get_family("qwen2_5_vl")
    split = add_chat_columns(make_synthetic_dataset(2, seed=1), family, detection_prompt(family, ["red circle"]), 3136, 50176,
                             system_prompt="Find shapes.")
    row = grpo_dataset(split)[0]
    assert row["prompt"] == [
        {"role": "system", "content": [{"type": "text", "text": "Find shapes."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": split[0]["prompt"]}]},
    ]
    assert row["image"].size == (split[0]["width"], split[0]["height"]) and row["objects"] == split[0]["objects"]


def test_rollouts_end_a_looping_answer_with_the_end_of_turn_token(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_5_vl"], 3136, 50176)
    tokenizer = processor.tokenizer
    obj = '{"bbox_2d": [1, 2, 3, 4], "label": "red circle"}'
    twice = tokenizer.encode(f"{obj}, {obj}", add_special_tokens=False)  # the second copy's last token closes it
    once = tokenizer.encode(obj, add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = [7, 8]
    processor_ = EndTurnAfterLoop(tokenizer, prompt_length=len(prompt), repeats=2, end_of_turn_id=end)
    other = [7] * (len(twice) - len(once)) + once  # one object, written once: no loop
    looping = torch.tensor([prompt + twice, prompt + other])
    scores = processor_(looping, torch.zeros(2, len(tokenizer)))
    assert scores[0].argmax().item() == end and scores[0].max() == 0 and scores[0].min() < -1e30  # only the end of turn is left
    assert torch.equal(scores[1], torch.zeros(len(tokenizer))) and processor_.rows_stopped == 1  # the other row samples freely


def test_rollouts_never_sample_vision_tokens(tiny_checkpoints):
    tokenizer = load_processor(tiny_checkpoints["qwen2_5_vl"], 3136, 50176).tokenizer
    ids = suppressed_token_ids(tokenizer)
    names = tokenizer.convert_ids_to_tokens(ids)
    assert set(ids) == vision_token_ids(tokenizer) and {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>"} <= set(names)


@pytest.mark.slow
def test_a_few_grpo_steps_after_sft_log_the_reward_and_change_the_weights(sft_grpo_run):
    # 600 SFT steps at the demo's geometry: enough for answers in the format with boxes somewhere, so the answers
    # of a group score differently and GRPO has a gradient (after the smoke preset's 12 steps every answer scores 0).
    result, run_dir = sft_grpo_run  # tests.conftest.SFT_THEN_GRPO
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"baseline", "finetuned", "grpo"}
    history = json.loads((run_dir / "grpo_log_history.json").read_text())
    logged = [entry for entry in history if "reward" in entry]
    assert logged and all(0 <= entry["reward"] <= 1 for entry in logged) and any(entry["reward_std"] > 0 for entry in logged)
    assert any("reward/duplicate_rate" in entry and "completions/mean_length" in entry for entry in logged)
    sft = load_file(sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1] / "model.safetensors")
    final = load_file(run_dir / "model" / "model.safetensors")
    assert set(sft) == set(final) and any(not torch.equal(sft[name], final[name]) for name in sft)  # GRPO moved the weights
    for name in ("plots/grpo_curves.png", "predictions_sft.jsonl", "grpo_checkpoints/reference/model.safetensors"):
        assert (run_dir / name).is_file(), name
    # The error analysis of every stage, its pictures, and the test images the app shows.
    analyses = metrics["error_analysis"]
    assert set(analyses) == {"baseline", "finetuned", "grpo"}
    for analysis in analyses.values():
        errors = analysis["errors"]
        assert errors["false_positives"] == sum(errors[kind] for kind in ("localisation", "confusion", "duplicate", "background"))
        assert errors["true_positives"] + errors["false_negatives"] == metrics["finetuned"]["n_ground_truth"]
    for name in ("plots/per_class.png", "plots/errors.png"):
        assert (run_dir / name).is_file(), name
    assert len(json.loads((run_dir / "test_images" / "index.json").read_text())) == metrics["finetuned"]["n_images"] == 8


@pytest.mark.slow
def test_grpo_resumes_from_its_own_checkpoint(tmp_path, run_notebook):
    # A finished run asked for more GRPO steps with resume_from_checkpoint=true: SFT resumes from its last checkpoint
    # (nothing left to do), GRPO from its own newest one, and its log goes on from there.
    settings = ["grpo_generations=2", "grpo_max_completion_length=16", "test_size=2", "run_name=grpo-resume"]
    first = run_notebook(tmp_path, *settings, "grpo_steps=4")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_dir = tmp_path / "grpo-resume"
    assert sorted(p.name for p in (run_dir / "grpo_checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = run_notebook(tmp_path, *settings, "grpo_steps=6", "resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    history = json.loads((run_dir / "grpo_log_history.json").read_text())
    assert [entry["step"] for entry in history if "reward" in entry] == [1, 2, 3, 4, 5, 6]  # 1-4 restored from the checkpoint
    sft = json.loads((run_dir / "log_history.json").read_text())
    assert max(entry["step"] for entry in sft) == 12  # SFT did not train again
