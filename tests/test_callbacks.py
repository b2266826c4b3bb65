"""Callbacks in a real tiny SFTTrainer run: the values they log, where they reach, the model's mode."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from helpers.train.callbacks import (
    ConsoleLogCallback,
    GradNormCallback,
    IoUEvalCallback,
    attach_callbacks,
    gradient_l2_norm,
)
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.evaluate.metrics import EVAL_MEAN_IOU, EVAL_PARSE_FAILURE_RATE
from helpers.train.model import load_model_and_processor
from helpers.train.lora import lora_config, wrap_lora
from tests.support.notebook_cells import run_tagged_cells
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import get_family
from helpers.evaluate.generation import GenerationSettings
from tests.support.notebook_cells import notebook_sft_config

CLASSES = ["red circle", "green square", "blue triangle"]


class RecordingCallback(TrainerCallback):
    """Stands in for a logging backend: records every log it is shown."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def tiny_run(defaults: dict, checkpoint, tmp_path, max_grad_norm: float, use_lora: bool):
    """Six optimizer steps with logging every step and evaluation at steps 3 and 6; returns trainer and recorder."""
    model, processor = load_model_and_processor(checkpoint, "none", "sdpa", torch.float32, "cpu", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    if use_lora:
        model = wrap_lora(model, lora_config(get_family("qwen2_vl"), ["language"], 4, 8, 0.0))
    prompt = detection_prompt(get_family("qwen2_vl"), CLASSES)
    splits = [add_chat_columns(make_synthetic_dataset(n, seed=s), get_family("qwen2_vl"), prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
              for n, s in ((16, 1), (4, 2))]
    params = defaults | {"max_steps": 6, "logging_steps": 1, "eval_steps": 3, "save_steps": 100, "per_device_train_batch_size": 4,
                         "per_device_eval_batch_size": 4, "max_grad_norm": max_grad_norm, "learning_rate": 1e-3}
    trainer = SFTTrainer(model=model, args=notebook_sft_config(params, tmp_path, "cpu", torch.float32), train_dataset=splits[0],
                         eval_dataset=splits[1], data_collator=run_tagged_cells("collators")["AssistantOnlyCollator"](processor),
                         processing_class=processor)
    recorder, printed = RecordingCallback(), []
    trainer.add_callback(recorder)  # added first, like a backend the trainer was created with
    iou = IoUEvalCallback(processor, splits[1], n_images=3, family=get_family("qwen2_vl"), settings=GenerationSettings(max_new_tokens=8, batch_size=2))
    attach_callbacks(trainer, [GradNormCallback(), iou, ConsoleLogCallback(print_fn=printed.append)])
    trainer.train()
    return trainer, recorder, printed


@pytest.mark.parametrize("max_grad_norm,use_lora", [(0.01, False), (1e9, False), (0.01, True)])
def test_callbacks_log_into_every_record_and_backend(tiny_checkpoints, default_params, tmp_path, max_grad_norm, use_lora):
    trainer, recorder, printed = tiny_run(default_params, tiny_checkpoints["qwen2_vl"], tmp_path, max_grad_norm, use_lora)
    history = trainer.state.log_history
    train_logs = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in train_logs] == [1, 2, 3, 4, 5, 6]
    for entry in train_logs:
        # The trainer's grad_norm is measured before clipping, ours after: the clip is min(norm, max).
        assert entry["grad_norm_clipped"] == pytest.approx(min(entry["grad_norm"], max_grad_norm), rel=1e-4)
    if max_grad_norm < 1:
        assert all(entry["grad_norm"] > max_grad_norm for entry in train_logs)  # clipping was active
    eval_logs = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in eval_logs] == [3, 6]
    for entry in eval_logs:
        assert 0 <= entry[EVAL_MEAN_IOU] <= 1 and 0 <= entry[EVAL_PARSE_FAILURE_RATE] <= 1
    # A backend registered before ours still sees the added values, and so does the console line.
    assert sum("grad_norm_clipped" in logs for logs in recorder.logs) == 6
    assert sum(EVAL_MEAN_IOU in logs for logs in recorder.logs) == 2
    assert sum(EVAL_MEAN_IOU in line for line in printed) == 2
    assert printed[0].startswith("step 1/6 | loss ")


def test_grad_norm_matches_an_independent_computation():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)  # frozen parameters do not count
    model(torch.ones(4, 3)).sum().backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]).norm().item()
    assert gradient_l2_norm(model) == pytest.approx(expected)


@pytest.mark.parametrize("training", [True, False])
def test_iou_callback_leaves_the_model_mode_as_found(tiny_checkpoints, training):
    model, processor = load_model_and_processor(
        tiny_checkpoints["qwen2_vl"], "none", "sdpa", torch.float32, "cpu", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS
    )
    model = wrap_lora(model, lora_config(get_family("qwen2_vl"), ["language"], 4, 8, 0.0))  # a PEFT-wrapped model
    prompt = detection_prompt(get_family("qwen2_vl"), CLASSES)
    data = add_chat_columns(make_synthetic_dataset(2, seed=3), get_family("qwen2_vl"), prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    callback = IoUEvalCallback(processor, data, n_images=2, family=get_family("qwen2_vl"), settings=GenerationSettings(max_new_tokens=4, batch_size=2))
    model.train(training)

    class State:
        log_history = [{"eval_loss": 1.0, "step": 3}]
        global_step = 3

    logs = {"eval_loss": 1.0}
    callback.on_log(None, State, None, logs=logs, model=model)
    assert model.training is training
    assert set(logs) == {"eval_loss", EVAL_MEAN_IOU, EVAL_PARSE_FAILURE_RATE} and State.log_history[-1] == logs | {"step": 3}


def test_tensorboard_backend_gets_the_added_values_inside_the_run_folder(tiny_checkpoints, default_params, tmp_path, monkeypatch):
    from helpers.runtime.tracking import configure_reporting

    environ = {}
    configure_reporting("tensorboard", tmp_path, environ)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", environ["TENSORBOARD_LOGGING_DIR"])
    model, processor = load_model_and_processor(
        tiny_checkpoints["qwen2_vl"], "none", "sdpa", torch.float32, "cpu", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS
    )
    prompt = detection_prompt(get_family("qwen2_vl"), CLASSES)
    data = add_chat_columns(make_synthetic_dataset(8, seed=1), get_family("qwen2_vl"), prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    params = default_params | {"max_steps": 2, "logging_steps": 1, "eval_steps": 100, "save_steps": 100, "per_device_train_batch_size": 4,
                         "report_to": "tensorboard"}
    trainer = SFTTrainer(model=model, args=notebook_sft_config(params, tmp_path, "cpu", torch.float32), train_dataset=data,
                         eval_dataset=data, data_collator=run_tagged_cells("collators")["AssistantOnlyCollator"](processor),
                         processing_class=processor)
    attach_callbacks(trainer, [GradNormCallback()])
    trainer.train()
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and any(b"grad_norm_clipped" in path.read_bytes() for path in events)


def test_console_lines_replace_the_trainers_raw_log_printer():
    from transformers.trainer_callback import CallbackHandler, PrinterCallback

    class Trainer:  # the three members attach_callbacks uses
        def __init__(self):
            self.callback_handler = CallbackHandler([PrinterCallback()], None, None, None, None)

        def add_callback(self, callback):
            self.callback_handler.add_callback(callback)

        def remove_callback(self, callback):
            self.callback_handler.remove_callback(callback)

    quiet, plain = Trainer(), Trainer()
    attach_callbacks(quiet, [GradNormCallback(), ConsoleLogCallback()])
    attach_callbacks(plain, [GradNormCallback()])
    assert [type(c).__name__ for c in quiet.callback_handler.callbacks] == ["GradNormCallback", "ConsoleLogCallback"]
    assert [type(c).__name__ for c in plain.callback_handler.callbacks] == ["GradNormCallback", "PrinterCallback"]
