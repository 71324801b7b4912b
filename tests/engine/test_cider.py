"""CIDEr and CIDEr-D (rlhf/engine/caption_metrics.py) against the official implementations' values on small
fixed sets, their basic properties, and `score_answers` (what `evaluate` reports) carrying both.

The reference values were computed once, outside the project (which does not depend on these packages), by:

    python3.11 -m venv /tmp/cocoeval && /tmp/cocoeval/bin/pip install pycocoevalcap   # 1.2
    git show f281464:pyciderevalcap/cider/cider_scorer.py \\
        | sed 's/iteritems/items/g; s/xrange/range/g' > vrama91_cider_scorer.py      # github.com/vrama91/cider
    /tmp/cocoeval/bin/python ref.py

    # ref.py
    from pycocoevalcap.cider.cider import Cider          # the COCO server's "CIDEr": CIDEr-D (clipped, σ = 6)
    from vrama91_cider_scorer import CiderScorer          # the authors' plain CIDEr (Python 2 code, two renames)
    for name, (gts, res) in SETS.items():                 # SETS: COCO_LIKE and DEMO_WORLD below, as dicts by id
        d_mean, d_scores = Cider().compute_score(gts, {k: [v] for k, v in res.items()})
        scorer = CiderScorer(n=4)
        for k in gts:
            scorer += (res[k], gts[k])
        c_mean, c_scores = scorer.compute_score("corpus")
        print(name, list(c_scores), c_mean, list(d_scores), d_mean)

Their input is pre-tokenised (lower case, no punctuation), as the official code expects after the PTB tokenizer.
"""

import random

import pytest

from rlhf.engine import evaluation
from rlhf.engine.caption_metrics import cider, cider_d, cider_scores

# 5 images with 3–5 references each; candidates: close, identical to a reference, repeating an n-gram (what
# CIDEr-D's clipping is for), one word (its length penalty), empty.
COCO_LIKE = [
    ("a man riding a horse on the beach",
     ["a man riding a horse on a beach", "a person rides a brown horse along the shore",
      "a man on a horse near the ocean", "someone riding a horse on the sand"]),
    ("two dogs playing in the snow",
     ["two dogs playing in the snow", "a pair of dogs run through snow",
      "two dogs are playing together outside in the snow"]),
    ("a bus a bus a red bus",
     ["a red double decker bus on a city street", "a bus driving down a busy street",
      "a red bus parked next to a sidewalk", "a double decker bus in the city", "a large red bus on the road"]),
    ("food",
     ["a plate of food with broccoli and rice", "a white plate topped with rice and vegetables",
      "broccoli and rice on a plate"]),
    ("",
     ["a cat sitting on a laptop keyboard", "a cat lying on top of a computer", "a black cat on a laptop"]),
]
COCO_LIKE_CIDER = [3.878375923988095, 4.829106062057498, 1.7191822834344168, 0.33738637285785406, 0.0]
COCO_LIKE_CIDER_D = [3.8585321235947205, 4.689731558185886, 0.9344082869977088, 0.17083073714964755, 0.0]
COCO_LIKE_MEANS = (2.1528101284675727, 1.9307005411855926)  # cider, cider_d

# Demo-world captions (the official input: punctuation already stripped).
DEMO_WORLD = [
    ("two shapes a small red circle and a large blue square",
     ["two shapes a small red circle and a large blue square"]),
    ("one shape a large green square", ["one shape a large green triangle", "one shape a big green triangle"]),
    ("two shapes a small blue diamond and a large red square",
     ["three shapes a small purple diamond a small yellow circle and a large red square"]),
    ("three shapes a large blue circle", ["two shapes a large blue circle and a small blue diamond"]),
]
DEMO_WORLD_CIDER = [10.0, 5.550173705049649, 3.055973829439803, 4.334721686048722]
DEMO_WORLD_CIDER_D = [10.0, 5.550173705049649, 2.4470325475673604, 3.063123614438825]
DEMO_WORLD_MEANS = (5.735217305134544, 5.265082466763959)


def _split(rows):
    return [c for c, _ in rows], [refs for _, refs in rows]


@pytest.mark.parametrize(("rows", "plain", "clipped", "means"), [
    (COCO_LIKE, COCO_LIKE_CIDER, COCO_LIKE_CIDER_D, COCO_LIKE_MEANS),
    (DEMO_WORLD, DEMO_WORLD_CIDER, DEMO_WORLD_CIDER_D, DEMO_WORLD_MEANS),
], ids=["coco_like", "demo_world"])
def test_cider_and_cider_d_match_the_official_implementations(rows, plain, clipped, means):
    preds, refs = _split(rows)
    assert cider_scores(preds, refs) == pytest.approx(plain, rel=1e-12, abs=1e-12)
    assert cider_scores(preds, refs, clipped=True) == pytest.approx(clipped, rel=1e-12, abs=1e-12)
    assert (cider(preds, refs), cider_d(preds, refs)) == pytest.approx(means, rel=1e-12)


def test_tokenisation_lower_cases_and_drops_punctuation_as_the_ptb_stand_in():
    preds, refs = _split(DEMO_WORLD)
    raw_preds = ["Two shapes: a small red circle and a large blue square.", *preds[1:]]
    raw_refs = [["two shapes: a small red circle and a large blue square."], *refs[1:]]
    assert cider_scores(raw_preds, raw_refs, clipped=True) == pytest.approx(DEMO_WORLD_CIDER_D, rel=1e-12)


def test_a_candidate_equal_to_its_references_scores_highest_and_an_empty_one_zero():
    preds, refs = _split(COCO_LIKE)
    same = [rs[0] for rs in refs]
    same_refs = [[r] * 3 for r in same]  # every reference the candidate itself: cosine 1, no length penalty
    for clipped in (False, True):
        assert cider_scores(same, same_refs, clipped=clipped) == pytest.approx([10.0] * len(same))
        for i in range(len(same)):  # any other candidate in its place scores less (idf comes from references only)
            for other in {*preds, *same} - {same[i]}:
                swapped = [*same[:i], other, *same[i + 1:]]
                assert cider_scores(swapped, same_refs, clipped=clipped)[i] < 10.0 - 1e-9
        assert all(0.0 <= x <= 10.0 + 1e-12 for x in cider_scores(preds, refs, clipped=clipped))
        assert cider_scores(["", *preds[1:]], refs, clipped=clipped)[0] == 0.0
    assert cider([], []) == cider_d([], []) == 0.0


def test_the_order_of_references_and_of_images_does_not_matter():
    preds, refs = _split(COCO_LIKE)
    rng = random.Random(0)
    shuffled_refs = [rng.sample(rs, len(rs)) for rs in refs]
    for clipped in (False, True):
        base = cider_scores(preds, refs, clipped=clipped)
        assert cider_scores(preds, shuffled_refs, clipped=clipped) == pytest.approx(base, rel=1e-12)
        order = list(reversed(range(len(preds))))
        again = cider_scores([preds[i] for i in order], [refs[i] for i in order], clipped=clipped)
        assert again == pytest.approx([base[i] for i in order], rel=1e-12)


def test_clipping_and_the_length_penalty_only_lower_the_score():
    preds, refs = _split(COCO_LIKE)
    for plain, clipped in zip(cider_scores(preds, refs), cider_scores(preds, refs, clipped=True), strict=True):
        assert clipped <= plain + 1e-12


def test_a_single_image_scores_zero_and_a_missing_reference_is_an_error():
    assert cider(["a red circle"], [["a red circle"]]) == 0.0  # every n-gram in every image: idf 0
    with pytest.raises(ValueError, match="at least one reference"):
        cider(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="reference lists"):
        cider(["a", "b"], [["a"]])


def test_score_answers_reports_cider_and_cider_d_beside_bleu_and_rouge():
    preds, refs = _split(COCO_LIKE)
    records = [{"prompt": "Describe the image.", "reference": rs} for rs in refs]
    m = evaluation.score_answers(records, preds)
    assert {"bleu", "rouge_l", "cider", "cider_d", "exact_match"} <= set(m)
    assert (m["cider"], m["cider_d"]) == pytest.approx(COCO_LIKE_MEANS, rel=1e-12)
