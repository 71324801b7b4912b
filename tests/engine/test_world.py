"""The demo world: scenes, captions, questions, seeded candidates and manifests."""

import json
import random

from rlhf.engine.demo import world


def test_scenes_hold_one_to_three_objects_with_consistent_ground_truth():
    rng = random.Random(0)
    for _ in range(50):
        image, gt = world.make_scene(rng)
        assert image.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
        assert 1 <= gt["count"] == len(gt["objects"]) <= world.MAX_OBJECTS
        json.dumps(gt)  # serialisable
        for o in gt["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= world.IMAGE_SIZE and 0 <= y0 < y1 <= world.IMAGE_SIZE
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            if o["shape"] in ("circle", "square", "diamond"):
                assert image.getpixel((cx, cy)) == world.COLORS[o["color"]]


def test_scenes_are_deterministic_for_a_seed():
    a = world.make_scene(random.Random(5))
    b = world.make_scene(random.Random(5))
    assert a[1] == b[1] and a[0].tobytes() == b[0].tobytes()


def test_reference_caption_parses_back_to_the_ground_truth():
    rng = random.Random(1)
    for _ in range(30):
        _, gt = world.make_scene(rng)
        cap = world.reference_caption(gt)
        parsed = world.parse_caption(cap)
        assert parsed["count"] == gt["count"]
        assert parsed["objects"] == [(o["size"], o["color"], o["shape"]) for o in gt["objects"]]
        assert world.is_well_formed_caption(cap)


def test_vqa_answers_agree_with_answer_question():
    rng = random.Random(2)
    for _ in range(30):
        _, gt = world.make_scene(rng)
        for q, a in world.vqa_pairs(gt, rng):
            assert world.answer_question(gt, q) == a


def test_demo_candidates_are_distinct_and_of_varying_correctness():
    rng = random.Random(3)
    right = 0
    for _ in range(40):
        _, gt = world.make_scene(rng)
        cands = world.demo_candidates(gt, 4, rng)
        assert len(cands) == len(set(cands)) == 4
        right += world.reference_caption(gt) in cands
        q, _ = world.vqa_pairs(gt, rng)[0]
        answers = world.demo_candidates(gt, 4, rng, task="vqa", question=q)
        assert len(set(answers)) == 4 and world.answer_question(gt, q) in answers
    assert 20 <= right < 40


def test_write_demo_manifest_is_deterministic_and_follows_the_import_format(tmp_path):
    p1 = world.write_demo_manifest(tmp_path / "a", 10, seed=4, k=3, eval_fraction=0.2)
    p2 = world.write_demo_manifest(tmp_path / "b", 10, seed=4, k=3, eval_fraction=0.2)
    assert p1.read_text() == p2.read_text()
    rows = [json.loads(line) for line in p1.read_text().splitlines()]
    assert len(rows) == 10 and sum(r["split"] == "eval" for r in rows) == 2
    # spread through the manifest (the queue serves it in order), not all at its end
    assert [i for i, r in enumerate(rows) if r["split"] == "eval"] == [4, 9]
    for r in rows:
        assert set(r) == {"image", "prompt", "reference", "ground_truth", "split", "candidates"}
        assert (p1.parent / r["image"]).is_file() and r["prompt"] == world.CAPTION_PROMPT
        assert len(set(r["candidates"])) == 3
    vqa = world.write_demo_manifest(tmp_path / "c", 5, seed=4, task_type="vqa")
    assert all(json.loads(x)["prompt"] != world.CAPTION_PROMPT for x in vqa.read_text().splitlines())
