"""A detection reward for reinforcement fine-tuning (TRL's ``reward_funcs``) that rewards finding every object exactly, and nothing else.

For one answer with predicted boxes P and true boxes G of an image (both in its pixels):

- an answer the reader cannot read (no box, and not an explicit empty answer) scores 0;
- an image without objects scores 1 for the empty answer and 0 for any box;
- otherwise, within each class, predicted and true boxes are paired by the assignment maximising their summed IoU
  (``scipy.optimize.linear_sum_assignment``), and with S the sum of the paired IoUs::

      detection = 2 S / (|P| + |G|)

  an IoU-weighted F1: its precision S/|P| falls with every invented box and its recall S/|G| with every
  missed one, and each pair counts by how well it fits. A box grown over the whole image or shrunk to a point
  pairs with a low IoU; each copy of a box beyond the first pairs with nothing and counts as invented, so
  duplicates (same label, IoU >= ``duplicate_iou``, counted for the log) cost as much as any invented box.
  Nothing is dropped before scoring, unlike evaluation, so that spamming boxes never pays;
- with ``format_weight`` w > 0: ``reward = (1 - w) * detection + w * closed``, where ``closed`` is 1 for an
  answer that ends where its syntax ends (a closed JSON list, or a last ``<|box_end|>``), 0 for a cut-off one.

The reward lies in [0, 1] and is 1 exactly for the true boxes (any order) and a closed answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from helpers.evaluate.generation import DUPLICATE_IOU
from helpers.evaluate.metrics import is_parse_failure
from helpers.families.boxes import box_iou, drop_duplicate_boxes, parse_model_answer, resized_size
from helpers.families.registry import Family

REWARD_NAME = "detection_reward"  # the name TRL logs the reward under (rewards/<name>/mean)


@dataclass(frozen=True)
class RewardParts:
    """One answer's reward and what it was made of."""

    reward: float
    readable: bool
    n_predicted: int
    n_true: int
    iou_sum: float  # S: the summed IoU of the paired boxes
    duplicates: int  # boxes duplicating another of their label (IoU >= duplicate_iou)
    area_ratio: float | None  # mean predicted / true area over the paired boxes (None: no pair): inflation shows as > 1
    closed: bool


def paired_ious(predicted: list[dict], true: list[dict]) -> list[tuple[int, int, float]]:
    """``(predicted index, true index, IoU)`` of the pairing that maximises the summed IoU within each class (pairs of IoU 0 left out)."""
    pairs = []
    for label in sorted({box["label"] for box in true} & {box["label"] for box in predicted}):
        p_index = [i for i, box in enumerate(predicted) if box["label"] == label]
        t_index = [j for j, box in enumerate(true) if box["label"] == label]
        ious = np.array([[box_iou(predicted[i]["bbox_xyxy_px"], true[j]["bbox_xyxy_px"]) for j in t_index] for i in p_index])
        rows, columns = linear_sum_assignment(ious, maximize=True)
        pairs += [(p_index[r], t_index[c], float(ious[r, c])) for r, c in zip(rows, columns) if ious[r, c] > 0]
    return pairs


def is_closed_answer(text: str) -> bool:
    """True for an answer that ends where its syntax ends: a closed JSON list (fenced or not) or a last ``<|box_end|>``."""
    stripped = text.strip().removesuffix("```").strip()
    return stripped.endswith(("]", "<|box_end|>"))


def area(box: list[float]) -> float:
    """Area of an xyxy box."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def score_answer(
    text: str, true: list[dict], family: Family, image_size: tuple[int, int], model_size: tuple[int, int],
    duplicate_iou: float = DUPLICATE_IOU, format_weight: float = 0.0,
) -> RewardParts:
    """The reward of one answer against the image's true boxes (see the module docstring for the formula)."""
    predicted = parse_model_answer(text, family, image_size, model_size)
    closed = is_closed_answer(text)
    duplicates = drop_duplicate_boxes(predicted, duplicate_iou)[1] if duplicate_iou > 0 else 0
    if is_parse_failure(text, predicted):
        return RewardParts(0.0, False, 0, len(true), 0.0, 0, None, closed)
    pairs = paired_ious(predicted, true)
    iou_sum = sum(iou for _p, _t, iou in pairs)
    if not true:
        detection = 1.0 if not predicted else 0.0
    else:
        detection = 2 * iou_sum / (len(predicted) + len(true))
    ratios = [area(predicted[p]["bbox_xyxy_px"]) / area(true[t]["bbox_xyxy_px"]) for p, t, _iou in pairs if area(true[t]["bbox_xyxy_px"]) > 0]
    reward = (1 - format_weight) * detection + format_weight * closed
    return RewardParts(reward, True, len(predicted), len(true), iou_sum, duplicates, float(np.mean(ratios)) if ratios else None, closed)


def completion_text(completion) -> str:
    """The answer's text from a TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):  # multimodal message content: the text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content


class DetectionReward:
    """TRL reward function: ``reward(prompts=..., completions=..., objects=..., width=..., height=...)`` -> one float per completion.

    ``objects``, ``width`` and ``height`` are the dataset's columns (TRL passes every extra column by name).
    The parts of each call's rewards are kept for logging (``pop_parts``).
    """

    __name__ = REWARD_NAME  # TRL names a reward function by its __name__

    def __init__(self, family: Family, min_pixels: int, max_pixels: int, duplicate_iou: float = DUPLICATE_IOU, format_weight: float = 0.0):
        if not 0 <= format_weight < 1:
            raise ValueError(f"grpo_format_weight must be in [0, 1), got {format_weight}")
        self.family, self.min_pixels, self.max_pixels = family, min_pixels, max_pixels
        self.duplicate_iou, self.format_weight = duplicate_iou, format_weight
        self.parts: list[RewardParts] = []

    def __call__(self, prompts=None, completions=None, objects=None, width=None, height=None, **kwargs) -> list[float]:
        if completions is None or objects is None or width is None or height is None:
            raise ValueError("the detection reward needs the dataset's 'objects', 'width' and 'height' columns beside the completions")
        rewards = []
        for completion, true, w, h in zip(completions, objects, width, height):
            model_size = resized_size(self.family, w, h, self.min_pixels, self.max_pixels)
            parts = score_answer(completion_text(completion), true, self.family, (w, h), model_size, self.duplicate_iou, self.format_weight)
            self.parts.append(parts)
            rewards.append(parts.reward)
        return rewards

    def pop_parts(self) -> list[RewardParts]:
        """The parts of every reward computed since the last call, and forget them."""
        parts, self.parts = self.parts, []
        return parts
