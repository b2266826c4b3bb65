"""The detection reward on the ways a policy games box rewards, each computed by hand."""

from __future__ import annotations

import pytest

from helpers.families.boxes import box_iou
from helpers.families.registry import get_family
from helpers.train.reward import REWARD_NAME, DetectionReward, score_answer

# Qwen3-VL writes 0..1000 of the image side: on a 1000 x 1000 image its numbers are pixels.
FAMILY = get_family("qwen3_vl")
SIZE = (1000, 1000)
CIRCLE = {"label": "red circle", "bbox_xyxy_px": [100.0, 100.0, 200.0, 200.0]}
SQUARE = {"label": "green square", "bbox_xyxy_px": [300.0, 300.0, 400.0, 400.0]}


def answer(*boxes: tuple[str, list[int]]) -> str:
    """A closed JSON answer with these (label, box) objects."""
    return "[" + ", ".join('{"bbox_2d": %s, "label": "%s"}' % (box, label) for label, box in boxes) + "]"


RIGHT = ("red circle", [100, 100, 200, 200])
# name, answer, true boxes, reward (hand-computed: 2 * summed IoU / (predicted + true)), duplicates, area ratio
CASES = [
    ("exact", answer(RIGHT), [CIRCLE], 1.0, 0, 1.0),
    # IoU = 100*100 / 1000*1000 = 0.01: 2 * 0.01 / 2
    ("grown over the whole image", answer(("red circle", [0, 0, 1000, 1000])), [CIRCLE], 0.01, 0, 100.0),
    # IoU = 1*1 / 100*100
    ("shrunk to a point", answer(("red circle", [150, 150, 151, 151])), [CIRCLE], 0.0001, 0, 0.0001),
    # one pair of IoU 1, nine invented copies: 2 * 1 / (10 + 1)
    ("ten copies of the right box", answer(*[RIGHT] * 10), [CIRCLE], 2 / 11, 9, 1.0),
    ("the empty answer on an image with objects", "[]", [CIRCLE], 0.0, 0, None),
    # 2 * 1 / (2 + 1)
    ("right, plus one invented box", answer(RIGHT, ("red circle", [600, 600, 700, 700])), [CIRCLE], 2 / 3, 0, 1.0),
    # the first object is read, the cut one is not: 2 * 1 / (1 + 2)
    ("cut off after the first of two", answer(RIGHT)[:-1] + ', {"bbox_2d": [300, 30', [CIRCLE, SQUARE], 2 / 3, 0, 1.0),
    ("the right place, the wrong class", answer(("green square", [100, 100, 200, 200])), [CIRCLE], 0.0, 0, None),
    ("two objects in the other order", answer(("green square", [300, 300, 400, 400]), RIGHT), [CIRCLE, SQUARE], 1.0, 0, 1.0),
    ("unreadable", "I see a red circle near the top left.", [CIRCLE], 0.0, 0, None),
    ("the empty answer on an empty image", "[]", [], 1.0, 0, None),
    ("a box on an empty image", answer(RIGHT), [], 0.0, 0, None),
    ("fenced JSON, as Qwen writes it", "```json\n" + answer(RIGHT) + "\n```", [CIRCLE], 1.0, 0, 1.0),
]


@pytest.mark.parametrize("name,text,true,reward,duplicates,area_ratio", CASES, ids=[case[0] for case in CASES])
def test_reward_on_the_hacking_cases(name, text, true, reward, duplicates, area_ratio):
    parts = score_answer(text, true, FAMILY, SIZE, SIZE)
    assert parts.reward == pytest.approx(reward, abs=1e-9)
    assert parts.duplicates == duplicates
    assert parts.area_ratio == (None if area_ratio is None else pytest.approx(area_ratio))


@pytest.mark.parametrize("text,closed,reward", [
    (answer(RIGHT), True, 1.0),
    # cut off: 0.9 * (2 * 1 / 3) + 0.1 * 0
    (answer(RIGHT)[:-1] + ', {"bbox_2d": [300, 30', False, 0.9 * 2 / 3),
    # the empty answer is closed, but finds nothing: 0.9 * 0 + 0.1
    ("[]", True, 0.1),
    ("I see a red circle.", False, 0.0),  # unreadable scores 0 whatever its form
])
def test_the_format_term(text, closed, reward):
    parts = score_answer(text, [CIRCLE, SQUARE] if "300" in text else [CIRCLE], FAMILY, SIZE, SIZE, format_weight=0.1)
    assert parts.closed == closed and parts.reward == pytest.approx(reward)


def test_pairs_maximise_the_summed_iou_not_the_first_best():
    # Greedy pairing would give the first prediction the box it overlaps most (IoU 0.82 with a) and leave the
    # second one b (0.21): 1.03 in all. The assignment gives the first one b (0.54) and the second a (0.69): 1.23.
    a = {"label": "x", "bbox_xyxy_px": [0.0, 0.0, 100.0, 100.0]}
    b = {"label": "x", "bbox_xyxy_px": [40.0, 0.0, 140.0, 100.0]}
    first, second = [10, 0, 110, 100], [0, 0, 69, 100]
    parts = score_answer(answer(("x", first), ("x", second)), [a, b], FAMILY, SIZE, SIZE)
    best = box_iou(first, b["bbox_xyxy_px"]) + box_iou(second, a["bbox_xyxy_px"])
    greedy = box_iou(first, a["bbox_xyxy_px"]) + box_iou(second, b["bbox_xyxy_px"])
    assert best > greedy and parts.iou_sum == pytest.approx(best)


def test_trl_calls_it_with_conversational_completions_and_the_dataset_columns():
    reward = DetectionReward(FAMILY, min_pixels=3136, max_pixels=50176)
    completions = [[{"role": "assistant", "content": answer(RIGHT)}], [{"role": "assistant", "content": "[]"}], answer(RIGHT)]
    values = reward(prompts=["p"] * 3, completions=completions, objects=[[CIRCLE], [CIRCLE], []], width=[1000] * 3, height=[1000] * 3)
    assert values == [pytest.approx(1.0), 0.0, 0.0] and reward.__name__ == REWARD_NAME
    assert [p.n_predicted for p in reward.pop_parts()] == [1, 0, 1] and reward.pop_parts() == []
    with pytest.raises(ValueError, match="'objects', 'width' and 'height'"):
        reward(prompts=["p"], completions=["[]"])
