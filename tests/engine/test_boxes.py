"""Box answers: the one text format (rewards.parse_boxes), the grounding and detection rewards on hand-made answers,
and the demo world's grounding and detection prompts with their ground-truth boxes."""

import json
import math
import random
from pathlib import Path

import pytest

from rlhf.engine import evaluation, rewards
from rlhf.engine.demo import rewards as demo_rewards
from rlhf.engine.demo import world

EXAMPLES = json.loads((Path(__file__).parent / "box_examples.json").read_text())
SCENE = {"objects": [{"shape": "circle", "color": "red", "size": "small", "box": [10, 10, 38, 38]},
                     {"shape": "square", "color": "blue", "size": "large", "box": [60, 60, 108, 108]}],
         "boxes": [[10, 10, 38, 38], [60, 60, 108, 108]], "labels": ["small red circle", "large blue square"],
         "count": 2, "image_size": 128}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["text"][:30] or "empty" for e in EXAMPLES])
def test_parse_boxes_reads_each_documented_example(example):
    """The same examples hold static/js/boxes.js to the same reading (tests/e2e/test_grounding.py)."""
    assert [[label, box] for label, box in rewards.parse_boxes(example["text"])] == example["boxes"]


def test_format_box_writes_what_parse_box_reads():
    for box in ([12, 40, 50, 80], [0.5, 1, 127.25, 128]):
        assert rewards.parse_box(rewards.format_box(box)) == box
    assert rewards.format_box([12, 40, 50, 80]) == "[12, 40, 50, 80]"


def test_iou_reward_scores_unparseable_answers_zero_without_raising():
    gt = {**SCENE, "box": [10, 10, 38, 38]}
    answers = ["[10, 10, 38, 38]", "[1, 2, 3]", "[a, b, c, d]", "", "[nan, 1, 2, 3]", "[ 1 0, 1 0, 3 8, 3 8 ]",
               [{"role": "assistant", "content": "[10, 10, 38, 38]"}]]
    assert rewards.iou_reward(["p"] * len(answers), answers, ground_truth=[gt] * len(answers)) == [
        1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_iou_reward_without_box_field_uses_the_best_of_the_scene():
    assert rewards.iou_reward(["p"], ["[60, 60, 108, 108]"], ground_truth=[SCENE]) == [1.0]


def test_bad_ground_truth_is_an_error_naming_the_field_and_row():
    with pytest.raises(ValueError, match=r"ground_truth\[1\]\.box"):
        rewards.iou_reward(["p", "p"], ["[1, 2, 3, 4]"] * 2, ground_truth=[{"box": [0, 0, 4, 4]}, {"box": [1, 2]}])
    with pytest.raises(ValueError, match=r"ground_truth\[0\]\.boxes entry 1"):
        rewards.detection_reward(["p"], ["[1, 2, 3, 4]"], ground_truth=[{"boxes": [[0, 0, 4, 4], ["a", 1, 2, 3]]}])
    with pytest.raises(ValueError, match=r"ground_truth\[0\] must be an object"):
        rewards.iou_reward(["p"], ["[1, 2, 3, 4]"], ground_truth=[None])


def test_detection_reward_penalises_missing_extra_and_mislabelled_boxes():
    right = "red circle [10, 10, 38, 38]; blue square [60, 60, 108, 108]"
    unlabelled = "[10, 10, 38, 38] [60, 60, 108, 108]"
    missing = "red circle [10, 10, 38, 38]"
    extra = right + "; green diamond [0, 90, 20, 110]"
    mislabelled = "red square [10, 10, 38, 38]; blue square [60, 60, 108, 108]"
    answers = [right, unlabelled, missing, extra, mislabelled, "no boxes"]
    soft = rewards.detection_reward(["p"] * 6, answers, ground_truth=[SCENE] * 6)
    assert soft[:2] == [1.0, 1.0]
    assert soft[2] == 0.5 and math.isclose(soft[3], 2 / 3) and soft[4] == 0.5 and soft[5] == 0.0
    f1 = rewards.detection_f1_reward(["p"] * 6, answers, ground_truth=[SCENE] * 6)
    assert f1[:3] == [1.0, 1.0, 2 / 3] and math.isclose(f1[3], 0.8) and f1[4] == 0.5 and f1[5] == 0.0


def test_detection_f1_counts_a_match_only_at_iou_one_half():
    near = "[10, 10, 38, 38]; [60, 60, 108, 84]"  # the second box covers half of the square: IoU 0.5
    far = "[10, 10, 38, 38]; [60, 60, 108, 80]"
    out = rewards.detection_f1_reward(["p", "p"], [near, far], ground_truth=[SCENE, SCENE])
    assert out == [1.0, 0.5]


def test_a_detection_answer_with_the_same_box_twice_matches_it_once():
    twice = "[10, 10, 38, 38]; [10, 10, 38, 38]"
    assert rewards.detection_reward(["p"], [twice], ground_truth=[{"boxes": [[10, 10, 38, 38]]}]) == [0.5]


def test_the_box_rewards_are_registered():
    for name in ("iou_reward", "detection_reward", "detection_f1_reward"):
        assert name in rewards.REWARDS


@pytest.mark.parametrize("task", ["grounding", "detection"])
def test_demo_manifest_of_box_tasks_carries_ground_truth_boxes_and_ranked_candidates(tmp_path, task):
    path = world.write_demo_manifest(tmp_path, 20, seed=3, task_type=task, k=4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 20 and {r["split"] for r in rows} == {"train", "eval"}
    reward = rewards.REWARDS["iou_reward" if task == "grounding" else "detection_reward"]
    for r in rows:
        gt = r["ground_truth"]
        assert gt["boxes"] and len(r["candidates"]) == 4 == len(set(r["candidates"]))
        assert reward([r["prompt"]], r["reference"], ground_truth=[gt]) == [1.0], r
        scores = demo_rewards.demo_reward([r["prompt"]] * 4, r["candidates"], ground_truth=[gt] * 4)
        assert scores == reward([r["prompt"]] * 4, r["candidates"], ground_truth=[gt] * 4)
        if task == "grounding":
            assert r["prompt"] == f"Where is the {gt['target']}?"
            target = [o for o in gt["objects"] if f"{o['color']} {o['shape']}" == gt["target"]]
            assert len(target) == 1 and target[0]["box"] == gt["box"]
    # The candidates span the range the annotators rank: some right, some near, some wrong.
    scores = [s for r in rows for s in demo_rewards.demo_reward([r["prompt"]] * 4, r["candidates"],
                                                                ground_truth=[r["ground_truth"]] * 4)]
    assert max(scores) == 1.0 and min(scores) < 0.3 and any(0.3 < s < 1 for s in scores)


def test_unknown_task_type_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="grounding"):
        world.write_demo_manifest(tmp_path, 2, seed=0, task_type="segmentation")


def test_demo_prompt_kinds_and_format_reward_for_boxes():
    g = world.GROUNDING_TEMPLATE.format(color="red", shape="circle")
    assert [demo_rewards.prompt_kind(p) for p in (world.CAPTION_PROMPT, g, world.DETECTION_PROMPT,
                                                  "How many shapes are there?")] == [
        "caption", "grounding", "detection", "vqa"]
    out = demo_rewards.format_reward([g, g, world.DETECTION_PROMPT, world.DETECTION_PROMPT],
                                     ["[1, 2, 3, 4]", "[1, 2, 3, 4] [5, 6, 7, 8]", "circle [1, 2, 3, 4]", "circle"])
    assert out == [1.0, 0.0, 1.0, 0.0]


def test_demo_answer_metrics_report_held_out_iou_and_detection_f1():
    rng = random.Random(0)
    _, scene = world.make_scene(rng)
    while not world.grounding_targets(scene):
        _, scene = world.make_scene(rng)
    prompt, gt = world.grounding_prompt(scene, rng)
    records = [{"prompt": prompt, "ground_truth": gt}, {"prompt": prompt, "ground_truth": gt},
               {"prompt": world.DETECTION_PROMPT, "ground_truth": scene}]
    answers = [rewards.format_box(gt["box"]), "nowhere", world.detection_answer(scene)]
    figures = evaluation.ANSWER_METRICS["demo"](records, answers)
    assert figures["grounding/iou"] == 0.5 and figures["grounding/acc@0.5"] == 0.5
    assert figures["detection/soft_f1"] == 1.0 and figures["detection/f1@0.5"] == 1.0
    assert "vqa/exact_match" not in figures


def test_demo_preferences_of_grounding_prefer_the_box_nearer_the_truth(tmp_path):
    """`python -m rlhf.engine demo-data --task grounding`: preference records whose chosen box has the higher IoU."""
    from rlhf.engine.demo.annotators import write_demo_preferences

    paths = write_demo_preferences(tmp_path, 12, seed=2, k=4, task_type="grounding")
    rows = [json.loads(line) for line in Path(paths["manifest"]).read_text().splitlines()]
    gts = {r["prompt"] + r["image"]: r["ground_truth"] for r in rows}
    pairs = [json.loads(line) for line in Path(paths["preferences"]).read_text().splitlines()]
    assert pairs
    for p in pairs:
        gt = gts[p["prompt"] + p["images"][0]]
        chosen, rejected = rewards.iou_reward([p["prompt"]] * 2, [p["chosen"], p["rejected"]], ground_truth=[gt, gt])
        assert chosen > rejected, p
