"""Verifiable rewards and evaluation metrics on hand-made answers."""

import math
import random

import pytest

from rlhf.engine import evaluation, rewards
from rlhf.engine.demo import rewards as demo_rewards
from rlhf.engine.demo import world

GT = {"objects": [{"shape": "circle", "color": "red", "size": "small", "box": [10, 10, 30, 30]},
                  {"shape": "square", "color": "blue", "size": "large", "box": [60, 60, 100, 100]}],
      "count": 2, "image_size": 128}
RIGHT = "two shapes: a small red circle and a large blue square."


def test_caption_reward_scores_each_attribute():
    wrong_colour = "two shapes: a small green circle and a large blue square."
    wrong_count = "one shape: a small red circle."
    out = demo_rewards.caption_reward(["Describe the image."] * 3, [RIGHT, wrong_colour, wrong_count],
                                 ground_truth=[GT] * 3)
    assert out[0] == 1.0
    assert math.isclose(out[1], (1 + 0.5 + 1) / 3)
    assert math.isclose(out[2], (0 + 0.5 + 0.5) / 3)
    assert demo_rewards.color_reward([""], [wrong_colour], ground_truth=[GT]) == [0.5]


def test_rewards_accept_conversational_completions():
    conv = [[{"role": "assistant", "content": RIGHT}]]
    assert demo_rewards.caption_reward(["p"], conv, ground_truth=[GT]) == [1.0]
    conv_parts = [[{"role": "assistant", "content": [{"type": "text", "text": "Red"}]}]]
    assert demo_rewards.exact_match_reward(["What color is the circle?"], conv_parts, reference=[["red"]]) == [1.0]


def test_exact_match_uses_ground_truth_when_no_reference():
    out = demo_rewards.exact_match_reward(["How many shapes are there?", "What color is the square?"], ["two", "red"],
                                     ground_truth=[GT, GT])
    assert out == [1.0, 0.0]


def test_iou_reward_against_target_box_and_best_of_boxes():
    assert rewards.iou_reward(["p"], ["[10, 10, 30, 30]"], ground_truth=[{"box": [10, 10, 30, 30]}]) == [1.0]
    half = rewards.iou_reward(["p"], ["the box is 60 60 100 80"], ground_truth=[GT])[0]
    assert math.isclose(half, 0.5)
    assert rewards.iou_reward(["p"], ["no box"], ground_truth=[GT]) == [0.0]


def test_format_reward_checks_caption_grammar_and_short_answers():
    out = demo_rewards.format_reward([world.CAPTION_PROMPT, world.CAPTION_PROMPT, "How many shapes are there?"],
                                [RIGHT, "two shapes: a small red circle.", "two"])
    assert out == [1.0, 0.0, 1.0]


def test_a_reward_without_its_column_says_which_is_missing():
    with pytest.raises(ValueError, match="ground_truth"):
        demo_rewards.caption_reward(["p"], [RIGHT])


def test_demo_reward_ranks_the_reference_first():
    rng = random.Random(0)
    for _ in range(20):
        _, gt = world.make_scene(rng)
        cands = world.demo_candidates(gt, 4, rng)
        scores = demo_rewards.demo_reward([world.CAPTION_PROMPT] * 4, cands, ground_truth=[gt] * 4)
        ref = world.reference_caption(gt)
        if ref in cands:
            assert scores[cands.index(ref)] == max(scores) == 1.0


def test_text_metrics_are_perfect_on_identical_answers():
    preds, refs = [RIGHT, "two"], [[RIGHT], ["two"]]
    assert evaluation.exact_match(preds, refs) == 1.0
    assert evaluation.rouge_l(preds, refs) == pytest.approx(1.0)
    assert evaluation.bleu([RIGHT], [[RIGHT]]) == pytest.approx(100.0)
    assert evaluation.word_accuracy("two shapes: a red", "two shapes: a blue") == 0.75


def test_expected_calibration_error_matches_a_naive_computation():
    chosen, rejected = [2.0, 0.1, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0]
    # confidences max(p, 1-p) and correctness (p > 0.5)
    ps = [1 / (1 + math.exp(-(c - r))) for c, r in zip(chosen, rejected, strict=True)]
    conf = [max(p, 1 - p) for p in ps]
    correct = [float(p > 0.5) for p in ps]
    bins = {}
    for c, k in zip(conf, correct, strict=True):
        bins.setdefault(min(9, int((c - 0.5) / 0.05)), []).append((c, k))
    naive = sum(len(b) / 4 * abs(sum(k for _, k in b) / len(b) - sum(c for c, _ in b) / len(b)) for b in bins.values())
    assert evaluation.expected_calibration_error(chosen, rejected) == pytest.approx(naive)
    assert evaluation.pairwise_accuracy(chosen, rejected) == 0.75


def test_score_answers_reports_demo_attributes():
    records = [{"prompt": world.CAPTION_PROMPT, "reference": [RIGHT], "ground_truth": GT},
               {"prompt": "How many shapes are there?", "reference": ["two"], "ground_truth": GT}]
    m = evaluation.score_answers(records, [RIGHT, "three"])
    assert m["caption/exact_match"] == 1.0 and m["caption/count"] == 1.0 and m["vqa/exact_match"] == 0.0
    assert m["exact_match"] == 0.5


def test_the_demo_rewards_register_themselves_and_configs_name_them_as_before():
    for name in ("caption_reward", "count_reward", "color_reward", "shape_reward", "exact_match_reward",
                 "iou_reward", "format_reward", "demo_reward"):
        assert name in rewards.REWARDS
    assert rewards.REWARDS["demo_reward"] is demo_rewards.demo_reward
    assert "no_such_reward" not in rewards.REWARDS
    with pytest.raises(KeyError, match="no_such_reward"):
        rewards.REWARDS["no_such_reward"]
    assert "demo" in evaluation.ANSWER_METRICS


def test_a_registry_refuses_a_second_function_under_a_taken_name():
    from rlhf.engine.registry import Registry

    reg = Registry("thing")

    @reg.register
    def f():
        return 1

    reg.register(f)  # the same function again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register(lambda: 2, name="f")
