"""Training configuration from the notebook's parameters, its arithmetic, and resume choices."""

from __future__ import annotations

import pytest
import torch

from tests.support.notebook_cells import notebook_sft_config
from helpers.train.callbacks import ConsoleLogCallback
from helpers.train.config import best_checkpoint_problem, best_model_settings, device_defaults, print_training_config, training_arithmetic
from helpers.train.resume import latest_complete_checkpoint, resolve_resume


def test_config_from_notebook_defaults_on_cpu(tmp_path, default_params):
    config = notebook_sft_config(default_params, tmp_path / "run", "cpu", torch.float32)
    assert config.output_dir == str(tmp_path / "run" / "checkpoints")
    assert (config.bf16, config.fp16, config.dataloader_pin_memory, config.activation_checkpointing) == (False, False, False, False)
    assert config.remove_unused_columns is False and config.max_length is None
    assert config.dataset_kwargs == {"skip_prepare_dataset": True}
    assert config.report_to == [] and config.seed == default_params["seed"] == config.data_seed
    assert config.max_grad_norm == default_params["max_grad_norm"] and config.weight_decay == default_params["weight_decay"]
    assert config.get_warmup_steps(1000) == 50  # warmup_ratio 0.05 of the total


@pytest.mark.parametrize(
    "device,dtype,expected",
    [
        ("cpu", torch.float32, (False, False, False, False)),
        ("cuda", torch.bfloat16, (True, False, True, True)),
        ("cuda", torch.float16, (False, True, True, True)),
    ],
)
def test_device_defaults(device, dtype, expected):
    d = device_defaults(device, dtype)
    assert (d["bf16"], d["fp16"], d["dataloader_pin_memory"], d["activation_checkpointing"]) == expected


@pytest.mark.parametrize(
    "n_train,batch,accumulation,max_steps,epochs,expected",
    [
        (2048, 8, 1, 1500, 1.0, {"effective_batch": 8, "steps_per_epoch": 256, "total_steps": 1500, "warmup_steps": 75}),
        (2048, 8, 4, -1, 2.0, {"effective_batch": 32, "steps_per_epoch": 64, "total_steps": 128, "warmup_steps": 7}),
        (100, 8, 1, -1, 1.0, {"effective_batch": 8, "steps_per_epoch": 13, "total_steps": 13, "warmup_steps": 1}),
        (100, 8, 4, -1, 1.0, {"effective_batch": 32, "steps_per_epoch": 4, "total_steps": 4, "warmup_steps": 1}),  # 13 batches / 4
    ],
)
def test_training_arithmetic(tmp_path, n_train, batch, accumulation, max_steps, epochs, expected, default_params):
    params = default_params | {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
                         "max_steps": max_steps, "num_train_epochs": epochs}
    arithmetic = training_arithmetic(notebook_sft_config(params, tmp_path, "cpu", torch.float32), n_train)
    assert {k: arithmetic[k] for k in expected} == expected
    assert arithmetic["epochs"] == pytest.approx(expected["total_steps"] * expected["effective_batch"] / n_train)


def test_printed_training_config_shows_the_arithmetic(tmp_path, default_params):
    printed = []
    print_training_config(notebook_sft_config(default_params, tmp_path, "cpu", torch.float32), 2048, print_fn=printed.append)
    text = printed[0]
    assert "effective batch   8 = 8 per device x 1 accumulation x 1 process(es)" in text
    assert "75 warm-up steps then cosine" in text and "5.86 epochs" in text and "precision         fp32" in text


def make_checkpoint(folder, step, complete=True, weights="model.safetensors"):
    """A checkpoint folder with every file the trainer writes (trainer_state.json last, as it does), or one cut before the state."""
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(64)}, path / weights)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(64)}, path / name)
    if complete:
        (path / "trainer_state.json").write_text('{"global_step": %d}' % step)
    return path


def test_resume_choices(tmp_path):
    assert resolve_resume(False, tmp_path) is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume(True, tmp_path)
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 10, weights="adapter_model.safetensors")
    make_checkpoint(tmp_path, 15, complete=False)  # killed while being written: the state comes last
    assert latest_complete_checkpoint(tmp_path, print_fn=lambda *_: None) == tmp_path / "checkpoint-10"
    assert resolve_resume(True, tmp_path, print_fn=lambda *_: None) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(str(tmp_path / "checkpoint-5"), tmp_path) == str(tmp_path / "checkpoint-5")
    with pytest.raises(ValueError, match="trainer_state.json is missing"):
        resolve_resume(str(tmp_path / "checkpoint-15"), tmp_path)


def truncate(path):
    """Cut a file to half its length, as a full disk or a killed writer leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BREAKAGES = [(name, how) for name in ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")
             for how in ("missing", "truncated")]


@pytest.mark.parametrize("name,how", BREAKAGES, ids=[f"{n}-{h}" for n, h in BREAKAGES])
def test_resume_skips_a_checkpoint_with_any_file_missing_or_truncated(tmp_path, name, how):
    make_checkpoint(tmp_path, 5)
    broken = make_checkpoint(tmp_path, 10)
    (broken / name).unlink() if how == "missing" else truncate(broken / name)
    printed = []
    assert resolve_resume(True, tmp_path, print_fn=printed.append) == str(tmp_path / "checkpoint-5")
    reason = f"{name} is {'missing' if how == 'missing' else 'truncated or unreadable'}"
    if (name, how) == ("model.safetensors", "missing"):
        reason = "no model weights (model.safetensors, its index, or adapter_model.safetensors)"
    assert printed == [f"resume: skipping checkpoint-10: {reason}"]
    with pytest.raises(ValueError, match=f"cannot be resumed from: {reason}".replace("(", r"\(").replace(")", r"\)")):
        resolve_resume(str(broken), tmp_path)


def test_resume_checks_every_shard_of_a_sharded_checkpoint(tmp_path):
    import json

    folder = make_checkpoint(tmp_path, 5, weights="model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors is missing"):
        resolve_resume(str(folder), tmp_path)


@pytest.mark.parametrize(
    "keep,save,evaluate,iou_images,problem",
    [("last", 750, 500, 16, None), ("best_eval_loss", 1000, 500, 16, None), ("best_eval_iou", 500, 500, 16, None),
     ("best_eval_loss", 750, 500, 16, "save_steps=750 must be a multiple of eval_steps=500 (set save_steps to 1000)"),
     ("best_eval_iou", 500, 500, 0, "set iou_eval_images to 1 or more")],
)
def test_keeping_the_best_checkpoint_needs_checkpoints_at_evaluations(keep, save, evaluate, iou_images, problem):
    found = best_checkpoint_problem(keep, save, evaluate, iou_images)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize(
    "keep,expected",
    [("last", {"load_best_model_at_end": False}),
     ("best_eval_loss", {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False}),
     ("best_eval_iou", {"load_best_model_at_end": True, "metric_for_best_model": "eval_mean_iou", "greater_is_better": True})],
)
def test_best_model_settings_name_the_metric_and_its_direction(keep, expected):
    assert best_model_settings(keep) == expected


def test_the_console_warns_when_eval_loss_keeps_rising():
    printed = []
    console = ConsoleLogCallback(print_fn=printed.append)
    state = type("State", (), {"global_step": 1, "max_steps": 10})()
    for loss in (0.9, 0.8, 0.85, 0.9, 0.95):
        console.on_log(None, state, None, logs={"eval_loss": loss})
    warnings = [line for line in printed if line.startswith("WARNING")]
    assert warnings == ["WARNING: eval loss has risen 3 evaluations in a row (0.8 -> 0.95): the model may be overfitting; "
                        "keep_checkpoint='best_eval_loss' keeps the best one"]
