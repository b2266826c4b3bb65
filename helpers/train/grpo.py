"""The reinforcement stage after SFT: TRL's ``GRPOTrainer`` with the detection reward, the project's loop control in rollouts, and its logs.

Rollouts sample ``num_generations`` answers per prompt from the SFT model. Two things keep them sane:
- the loop control of evaluation (``helpers.evaluate.generation.RepeatedObjectStop``): once one object's text has
  been written ``loop_repeats`` times, the answer's end-of-turn token is forced next, so a looping rollout ends
  (its repeats still cost in the reward) instead of filling ``max_completion_length``;
- image, video and vision-delimiter tokens are never sampled (``suppressed_token_ids``: a sampled pad token
  would be taken for an image placeholder; TRL suppresses the image pad alone).
The KL penalty (``beta`` > 0) is measured against the SFT model: TRL builds its reference from the policy's
``config._name_or_path``, which for a fully fine-tuned model would be the checkpoint SFT started from, so the
SFT weights are saved to ``<output_dir>/reference/`` and named there first. Under LoRA, TRL's reference is the
model with the adapter switched off: the base model before SFT.

Each step also logs, beside TRL's reward and completion length, the mean predicted-to-true box area ratio of
the paired boxes (inflation shows as a ratio above 1) and the share of predicted boxes that duplicate another.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import LogitsProcessor, LogitsProcessorList
from peft import PeftModel
from trl import GRPOTrainer

from helpers.data.images import open_image
from helpers.evaluate.generation import RepeatedObjectStop
from helpers.families.chat import vision_token_ids
from helpers.runtime.distributed import barrier, is_main_process
from helpers.train.resume import latest_complete_checkpoint
from helpers.train.reward import DetectionReward
from helpers.train.trainer import QwenVLCheckpoints

AREA_RATIO, DUPLICATE_RATE = "reward/area_ratio", "reward/duplicate_rate"  # logged each step
# What the console line of a GRPO log shows: TRL's reward, its spread within groups, the KL, the answers' length; the reward's parts.
GRPO_CONSOLE_KEYS = ("reward", "reward_std", "kl", "completions/mean_length", AREA_RATIO, DUPLICATE_RATE)
REFERENCE_FOLDER = "reference"  # under GRPO's output_dir: the SFT weights the KL penalty is measured against


def suppressed_token_ids(tokenizer) -> list[int]:
    """Tokens a rollout must never sample: the image and video pads and the vision delimiters."""
    return sorted(vision_token_ids(tokenizer))


class EndTurnAfterLoop(LogitsProcessor):
    """Force the end-of-turn token in a row whose answer has written one object ``repeats`` times (the loop control)."""

    def __init__(self, tokenizer, prompt_length: int, repeats: int, end_of_turn_id: int):
        self.loop = RepeatedObjectStop(tokenizer, prompt_length, repeats)
        self.end_of_turn_id = end_of_turn_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        looping = self.loop(input_ids, scores)
        if looping.any():
            scores[looping] = torch.finfo(scores.dtype).min
            scores[looping, self.end_of_turn_id] = 0.0
        return scores

    @property
    def rows_stopped(self) -> int:
        """How many rows were ended for looping."""
        return len(self.loop.stopped_at)


def grpo_resume(resume_from_checkpoint: bool | str, output_dir: str | Path) -> str | None:
    """Where GRPO resumes: its newest complete checkpoint when ``resume_from_checkpoint`` is True and one exists, else from the SFT model."""
    if resume_from_checkpoint is not True:
        return None  # False, or a path: an SFT checkpoint, which the SFT stage resumed from
    latest = latest_complete_checkpoint(output_dir, print)
    return str(latest) if latest is not None else None


def grpo_dataset(split: Dataset) -> Dataset:
    """A chat split as GRPO reads it: the user turn (image and prompt) as ``prompt`` messages, the image decoded, the true boxes for the reward.

    Images are decoded when a batch is read (a transform), as everywhere else; the system turn is the record's
    own, or the template's default when empty.
    """
    def to_rollout(batch: dict) -> dict:
        prompts = []
        for prompt, system in zip(batch["prompt"], batch["system_prompt"]):
            user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
            prompts.append(([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [user])
        return batch | {"prompt": prompts, "image": [open_image(image) for image in batch["image"]]}

    columns = ["image", "prompt", "system_prompt", "objects", "width", "height"]
    return split.select_columns(columns).with_transform(to_rollout)


class QwenVLGRPOTrainer(QwenVLCheckpoints, GRPOTrainer):
    """TRL's GRPO trainer with the project's loop control in its rollouts, the reward's parts in its logs, and a resume that restores Qwen-VL weights."""

    def __init__(self, *, model, args, reward: DetectionReward, loop_repeats: int, **kwargs):
        if args.beta > 0 and not isinstance(model, PeftModel):
            reference = Path(args.output_dir) / REFERENCE_FOLDER
            if is_main_process():
                model.save_pretrained(reference)
            barrier()
            model.config._name_or_path = str(reference)  # TRL loads its reference model from here: the SFT weights
        super().__init__(model=model, args=args, reward_funcs=[reward], **kwargs)
        self.detection_reward, self.loop_repeats = reward, loop_repeats
        self.loops_stopped = 0

    @contextmanager
    def _loop_control(self):
        """While rollouts are generated, every ``generate`` call of the policy also ends looping rows."""
        if self.loop_repeats == 0 or self.use_vllm:
            yield
            return
        model = self.accelerator.unwrap_model(self.model_wrapped)
        original = model.generate
        end_of_turn = self._tokenizer.convert_tokens_to_ids("<|im_end|>")

        def generate(*args, **kwargs):
            processor = EndTurnAfterLoop(self._tokenizer, kwargs["input_ids"].shape[1], self.loop_repeats, end_of_turn)
            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), processor])
            output = original(*args, **kwargs)
            self.loops_stopped += processor.rows_stopped
            return output

        model.generate = generate
        try:
            yield
        finally:
            del model.generate  # the class's own method again

    def _generate_single_turn(self, *args, **kwargs):
        with self._loop_control():
            return super()._generate_single_turn(*args, **kwargs)

    def _generate_and_score_completions(self, *args, **kwargs):
        output = super()._generate_and_score_completions(*args, **kwargs)
        parts = self.detection_reward.pop_parts()
        mode = "train" if self.model.training else "eval"
        ratios = [p.area_ratio for p in parts if p.area_ratio is not None]
        predicted = sum(p.n_predicted for p in parts)
        self._metrics[mode][AREA_RATIO].append(float(np.mean(ratios)) if ratios else float("nan"))
        self._metrics[mode][DUPLICATE_RATE].append(sum(p.duplicates for p in parts) / predicted if predicted else 0.0)
        return output
