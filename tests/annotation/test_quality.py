"""Quality control's computational core (annotation.quality): agreement on hand-made rankings with known
answers, Krippendorff's alpha against the maintained package, and the Crowd-BT reliability model on simulated
annotators whose worth is known. Pure: no database."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotation import quality
from lensloop.formats import pairs_from_groups
from rlhf.engine.demo.annotators import kinds_list, simulated_rankings

MIX = {"careful": 4, "adversarial": 2, "random": 2}


@pytest.fixture(scope="module")
def world():
    """The issue's benchmark in small: 8 annotators (4 careful, 2 adversarial, 2 random), overlap 2, 1,000
    tasks of 4 candidates with true scores."""
    rankings, truth = simulated_rankings(1000, MIX, overlap=2, k=4, seed=11)
    return rankings, truth, kinds_list(MIX)


def test_the_pairs_are_the_apps_rule():
    ordering = [[3], [1, 2], [4]]
    assert quality.pairs_of(ordering) == pairs_from_groups(ordering)
    assert quality.pairs_of([3, [1, 2], 4]) == pairs_from_groups(ordering)  # a bare id is a group of one


def test_prepare_flattens_rankings_with_ties_into_items_mid_ranks_and_pairs():
    d = quality.prepare([("t", "ann", [[30], [10, 20], [40]])])
    assert d.tasks == ["t"] and d.annotators == ["ann"]
    assert d.item_candidate.tolist() == [10, 20, 30, 40] and d.item_local.tolist() == [0, 1, 2, 3]
    mid = dict(zip(d.item_candidate[d.cell_item].tolist(), d.cell_midrank.tolist(), strict=True))
    assert mid == {30: 1.0, 10: 2.5, 20: 2.5, 40: 4.0}
    pairs = sorted(zip(d.item_candidate[d.pair_chosen].tolist(), d.item_candidate[d.pair_rejected].tolist(),
                       d.pair_margin.tolist(), strict=True))
    assert pairs == sorted(pairs_from_groups([[30], [10, 20], [40]]))


def test_a_second_ranking_of_a_task_by_the_same_annotator_replaces_the_first():
    d = quality.prepare([(1, "a", [[1], [2]]), (1, "b", [[1], [2]]), (1, "a", [[2], [1]])])
    assert d.ranking_source.tolist() == [1, 2]
    ag = quality.agreement(d, n_boot=0)
    assert (ag.agree, ag.disagree) == (0, 1)


def test_pairwise_agreement_counts_each_comparison_once_and_keeps_ties_apart():
    rankings = [
        (1, "a", [[1], [2], [3]]),  # task 1: {1,2} and {1,3} agree, {2,3} disagree
        (1, "b", [[1], [3], [2]]),
        (2, "a", [[5, 6], [7]]),  # task 2: {5,7} and {6,7} agree; {5,6}: a ties, b orders (one tied)
        (2, "b", [[5], [6], [7]]),
        (3, "a", [[9], [8]]),  # task 3 has one ranking: no comparison
    ]
    ag = quality.agreement(rankings, n_boot=200)
    assert (ag.tasks, ag.rankings) == (2, 4)
    assert (ag.agree, ag.disagree, ag.tie_one, ag.tie_both) == (4, 1, 1, 0)
    assert ag.pairwise == pytest.approx(0.8)
    for who in ("a", "b"):
        mine = ag.per_annotator[who]
        assert (mine.tasks, mine.agree, mine.disagree, mine.tie_one, mine.tie_both) == (2, 4, 1, 1, 0)


def test_three_annotators_each_pair_of_rankings_is_a_comparison_and_both_tied_is_counted():
    rankings = [
        (1, "a", [[1], [2], [3]]),
        (1, "b", [[1], [2], [3]]),
        (1, "c", [[1, 2], [3]]),  # ties 1 and 2
        (2, "a", [[1, 2]]),
        (2, "b", [[1, 2]]),  # task 2: a and b both tie
    ]
    ag = quality.agreement(rankings, n_boot=0)
    # task 1: a–b agree on 3 pairs; a–c and b–c agree on {1,3}, {2,3} and tie-one on {1,2}; task 2: both tied
    assert (ag.agree, ag.disagree, ag.tie_one, ag.tie_both) == (7, 0, 2, 1)
    assert ag.pairwise == 1.0
    c = ag.per_annotator["c"]
    assert (c.agree, c.disagree, c.tie_one, c.tie_both) == (4, 0, 2, 0)
    a = ag.per_annotator["a"]
    assert (a.tasks, a.agree, a.tie_one, a.tie_both) == (2, 5, 1, 1)


def test_perfect_agreement_is_one_and_reversed_rankings_are_below_zero():
    same = [(t, who, [[1], [2], [3], [4]]) for t in range(20) for who in ("a", "b")]
    ag = quality.agreement(same, n_boot=100)
    assert ag.pairwise == 1.0 and ag.alpha == pytest.approx(1.0)
    assert ag.pairwise_ci == (1.0, 1.0) and ag.alpha_ci == pytest.approx((1.0, 1.0))
    reversed_ = [(t, "a", [[1], [2], [3], [4]]) for t in range(20)] + [(t, "b", [[4], [3], [2], [1]]) for t in range(20)]
    ag = quality.agreement(reversed_, n_boot=100)
    assert ag.pairwise == 0.0 and ag.alpha < -0.5


def test_alpha_matches_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(3)
    rankings = []
    for t in range(60):
        for who in rng.choice(5, size=int(rng.integers(1, 4)), replace=False).tolist():
            order = rng.permutation(4).tolist()
            cut = int(rng.integers(0, 4))  # a tie now and then
            groups = [[c] for c in order] if cut == 0 else [[c] for c in order[:cut - 1]] + [order[cut - 1:cut + 1]] + [[c] for c in order[cut + 1:]]
            rankings.append((t, who, [g for g in groups if g]))
    d = quality.prepare(rankings)
    ag = quality.agreement(d, n_boot=0)
    multi = np.bincount(d.ranking_task)[d.ranking_task] >= 2
    cells = multi[d.cell_ranking]
    data = np.full((len(d.annotators), len(d.item_task)), np.nan)
    data[d.ranking_annotator[d.cell_ranking][cells], d.cell_item[cells]] = d.cell_midrank[cells]
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                                  value_domain=[1, 1.5, 2, 2.5, 3, 3.5, 4])
    assert ag.alpha == pytest.approx(expected, abs=1e-9)


def test_the_bootstrap_intervals_contain_the_estimates(world):
    rankings, _, kinds = world
    ag = quality.agreement(rankings, n_boot=300, seed=1)
    assert ag.pairwise_ci[0] < ag.pairwise < ag.pairwise_ci[1]
    assert ag.alpha_ci[0] < ag.alpha < ag.alpha_ci[1]
    for who, mine in ag.per_annotator.items():
        assert mine.pairwise_ci[0] < mine.pairwise < mine.pairwise_ci[1], who
    careful = [ag.per_annotator[a].pairwise for a in range(8) if kinds[a] == "careful"]
    adversarial = [ag.per_annotator[a].pairwise for a in range(8) if kinds[a] == "adversarial"]
    assert min(careful) > 0.5 > max(adversarial)


def test_nothing_to_compare_gives_nan_not_an_error():
    ag = quality.agreement([(1, "a", [[1], [2]]), (2, "b", [[1], [2]])])
    assert ag.tasks == 0 and math.isnan(ag.pairwise) and math.isnan(ag.alpha) and ag.per_annotator == {}


def test_crowd_bt_ranks_every_adversarial_and_random_annotator_below_every_careful_one(world):
    rankings, truth, kinds = world
    fit = quality.crowd_bt(rankings)
    eta = fit.by_annotator()
    careful = [eta[a] for a in eta if kinds[a] == "careful"]
    random_ = [eta[a] for a in eta if kinds[a] == "random"]
    adversarial = [eta[a] for a in eta if kinds[a] == "adversarial"]
    assert max(random_ + adversarial) < min(careful)
    assert max(adversarial) < 0.5 < min(careful)
    assert all(abs(e - 0.5) < 0.1 for e in random_)
    assert fit.converged and {kinds[a] for a, _, _ in fit.ranked()[:4]} == {"careful"}

    # the posterior confidence is higher for the pairs that agree with the truth
    scores = np.asarray(truth)
    pair_task = np.asarray([rankings[i][0] for i in fit.pair_ranking])
    right = scores[pair_task, fit.pair_chosen] > scores[pair_task, fit.pair_rejected]
    assert fit.confidence[right].mean() > 0.8 > 0.2 > fit.confidence[~right].mean()
    assert ((fit.confidence >= 0) & (fit.confidence <= 1)).all() and len(fit.confidence) == 6 * len(rankings)


def test_crowd_bt_scores_order_a_tasks_candidates_and_the_pairs_map_back_to_rankings():
    rankings = [(7, who, [[2], [0], [1]]) for who in ("a", "b", "c")] + [(8, "a", [[0], [1]]), (8, "b", [[0], [1]])]
    fit = quality.crowd_bt(rankings)
    first = fit.item_task == fit.tasks.index(7)
    by_candidate = dict(zip(fit.item_candidate[first].tolist(), fit.scores[first].tolist(), strict=True))
    assert by_candidate[2] > by_candidate[0] > by_candidate[1]
    assert sorted(set(fit.pair_ranking.tolist())) == list(range(5))
    mine = fit.pair_ranking == 3
    assert list(zip(fit.pair_chosen[mine].tolist(), fit.pair_rejected[mine].tolist(), strict=True)) == [(0, 1)]
    assert (fit.confidence > 0.5).all()


def test_the_quality_core_imports_no_django():
    code = "import sys, annotation.quality; print(any(m.split('.')[0] in ('django', 'rlhf') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
