"""Trainer callbacks: clipped gradient norm, detection IoU at each evaluation, a console log line.

``GradNormCallback`` and ``IoUEvalCallback`` add values to the trainer's own log records, so they
reach ``log_history`` and every logging backend (W&B, TensorBoard) and the console line. A
callback sees a log record in ``on_log`` after the trainer has stored it, and backends see it in
callback order, so ``attach_callbacks`` puts the adding callbacks before the reporting ones.
"""

from __future__ import annotations

import math

import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from helpers.evaluate.evaluation import evaluate_model
from helpers.evaluate.metrics import (
    EVAL_LOSS, EVAL_MEAN_IOU, EVAL_PARSE_FAILURE_RATE, GRAD_NORM, GRAD_NORM_CLIPPED, LEARNING_RATE, LOSS, MEAN_IOU, PARSE_FAILURE_RATE, TRAIN_RUNTIME,
)


def add_to_log(state, logs: dict, values: dict) -> None:
    """Add ``values`` to the record being logged and to its copy in ``state.log_history``."""
    logs.update(values)
    if state.log_history and state.log_history[-1].get("step") == state.global_step:
        state.log_history[-1].update(values)


def gradient_l2_norm(model) -> float:
    """L2 norm of the gradients of the trainable parameters (0 when none has a gradient)."""
    squares = [p.grad.detach().float().pow(2).sum() for p in model.parameters() if p.requires_grad and p.grad is not None]
    return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0


class GradNormCallback(TrainerCallback):
    """Log ``grad_norm_clipped``: the trainable gradients' L2 norm right before the optimizer step.

    It is measured after clipping to ``max_grad_norm``, so it is what the optimizer applies; the
    trainer's own ``grad_norm`` is the norm before clipping. Logged for the step that is logged.
    """

    adds_to_logs = True
    key = GRAD_NORM_CLIPPED

    def __init__(self):
        self.last_norm: float | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.last_norm = gradient_l2_norm(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and LOSS in logs and self.last_norm is not None:
            add_to_log(state, logs, {self.key: self.last_norm})


class IoUEvalCallback(TrainerCallback):
    """At each evaluation, generate on a fixed held-out subset and log ``eval_mean_iou`` and ``eval_parse_failure_rate``.

    Bounded by ``n_images`` and ``max_new_tokens``; batched with left padding; leaves the model in
    the train/eval mode it found; works on a PEFT-wrapped model (it only calls ``generate``).
    """

    adds_to_logs = True

    def __init__(self, processor, dataset: Dataset, n_images: int = 16, **eval_settings):
        """``eval_settings`` are ``evaluate_model``'s keywords: family, settings, class_names, duplicate_iou (prompts come from the dataset)."""
        self.processor = processor
        self.subset = dataset.select(range(min(n_images, len(dataset))))
        self.settings = eval_settings
        self.last: dict | None = None  # the figures of the latest evaluation

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or EVAL_LOSS not in logs or model is None:
            return
        was_training = model.training
        try:
            _, metrics = evaluate_model(model, self.processor, self.subset, **self.settings)
        finally:
            model.train(was_training)
        self.last = {EVAL_MEAN_IOU: metrics[MEAN_IOU], EVAL_PARSE_FAILURE_RATE: metrics[PARSE_FAILURE_RATE]}
        add_to_log(state, logs, self.last)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # The trainer logs an evaluation (on_log above) before it calls on_evaluate with the same figures, which
        # it then compares to keep the best checkpoint: the IoU joins them there, so it can be that metric.
        if metrics is not None and self.last is not None:
            metrics.update(self.last)


DEFAULT_CONSOLE_KEYS = (LOSS, GRAD_NORM, GRAD_NORM_CLIPPED, LEARNING_RATE, EVAL_LOSS, EVAL_MEAN_IOU, EVAL_PARSE_FAILURE_RATE, TRAIN_RUNTIME)


RISING_EVALUATIONS = 3  # eval loss rising this many evaluations in a row: the console says the model is overfitting


class ConsoleLogCallback(TrainerCallback):
    """Print one compact line per log record (``step 50/1500 | loss 0.912 | ...``), and a warning when eval loss keeps rising."""

    adds_to_logs = False

    def __init__(self, keys: tuple[str, ...] = DEFAULT_CONSOLE_KEYS, print_fn=print):
        self.keys = keys
        self.print_fn = print_fn
        self.eval_losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if EVAL_LOSS in logs:
            self.eval_losses.append(logs[EVAL_LOSS])
            recent = self.eval_losses[-(RISING_EVALUATIONS + 1) :]
            if len(recent) == RISING_EVALUATIONS + 1 and all(a < b for a, b in zip(recent, recent[1:])):
                self.print_fn(f"WARNING: eval loss has risen {RISING_EVALUATIONS} evaluations in a row ({recent[0]:.4g} -> {recent[-1]:.4g}): "
                              "the model may be overfitting; keep_checkpoint='best_eval_loss' keeps the best one")
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key in self.keys:
            if key in logs:
                value = logs[key]
                parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        if len(parts) > 1:
            self.print_fn(" | ".join(parts))


def attach_callbacks(trainer, callbacks: list[TrainerCallback]) -> None:
    """Add callbacks; those that add values to the logs go before the reporting ones, in the given order.

    With a ``ConsoleLogCallback``, the trainer's own ``PrinterCallback`` (its console output when progress bars
    are off, as in headless runs) goes: it would print every log record a second time, as a raw dict.
    """
    if any(isinstance(callback, ConsoleLogCallback) for callback in callbacks):
        trainer.remove_callback(PrinterCallback)
    position = 0
    for callback in callbacks:
        if getattr(callback, "adds_to_logs", False):
            trainer.callback_handler.callbacks.insert(position, callback)
            position += 1
        else:
            trainer.add_callback(callback)
