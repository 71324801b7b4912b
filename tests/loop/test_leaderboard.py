"""The Bradley–Terry leaderboard of model versions from human rankings."""

import random
import uuid
from collections import Counter

import pytest

from annotation.models import Candidate, RankingTask
from annotation.services import queue
from rlhf import leaderboard as leaderboard_module
from rlhf.leaderboard import board_from_rows, fit_bradley_terry, leaderboard
from tests import factories as f


def test_the_fit_recovers_the_order_of_known_strengths():
    rng = random.Random(0)
    truth = {"a": 4.0, "b": 2.0, "c": 1.0}
    wins = Counter()
    for _ in range(3000):
        x, y = rng.sample(list(truth), 2)
        winner = x if rng.random() < truth[x] / (truth[x] + truth[y]) else y
        wins[(winner, y if winner == x else x)] += 1
    p = fit_bradley_terry(wins)
    assert p["a"] > p["b"] > p["c"]
    assert p["a"] / p["b"] == pytest.approx(2.0, rel=0.15)


def test_a_version_that_never_lost_gets_a_finite_strength():
    p = fit_bradley_terry(Counter({("new", "old"): 5}))
    assert 1 < p["new"] < float("inf")


@pytest.mark.django_db
def test_the_leaderboard_prefers_the_version_annotators_rank_first():
    alice = f.user("alice")
    proj = f.project(k=2, annotators=[alice])
    for i in range(12):
        t = f.task(proj, texts=[f"old {i}", f"new {i}"])
        Candidate.objects.filter(pk=t.candidate_ids[0]).update(source="policy-v1")
        Candidate.objects.filter(pk=t.candidate_ids[1]).update(source="policy-v2")
    while (a := queue.next_task(annotator=alice, project=proj)) is not None:
        old, new = RankingTask.objects.get(pk=a.task_id).candidate_ids
        ordering = [[new], [old]] if a.task_id % 4 else [[old], [new]]  # v2 wins 3 of 4
        queue.submit_ranking(annotator=alice, task_id=a.task_id, ordering=ordering, client_uuid=uuid.uuid4())
    board = leaderboard(proj, bootstrap=100)
    assert [row["source"] for row in board] == ["policy-v2", "policy-v1"]
    best = board[0]
    assert best["ci_low"] <= best["rating"] <= best["ci_high"]
    assert best["comparisons"] == 12 and 0.5 < best["win_rate"] < 1


def _rankings(seed: int, n: int) -> list[tuple[int, str, str]]:
    """(ranking id, chosen, rejected) rows of ``n`` rankings of 2–4 of five players of known strength."""
    rng = random.Random(seed)
    truth = {"base": 1.0, "policy-v1": 1.8, "policy-v2": 2.5, "reference": 4.0, "human": 0.7}
    rows = []
    for r in range(n):
        players = rng.sample(list(truth), rng.choice([2, 3, 4]))
        order = sorted(players, key=lambda p: -truth[p] * rng.random())
        rows += [(r + 1, order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    return rows


# What the pure-Python fit and bootstrap of before (one MM fit per resample, random.choices) gave on these
# rows with seed 0: the numpy fit draws the same resamples, so the same seed gives the same intervals.
BEFORE = {
    (0, 60): {"base": (919.3, 846.8, 977.6), "human": (782.6, 675.3, 866.1), "policy-v1": (974.6, 900.9, 1062.0),
              "policy-v2": (1075.1, 993.4, 1175.0), "reference": (1248.3, 1173.0, 1344.8)},
    (2, 5): {"base": (990.5, 910.1, 1129.6), "human": (776.4, 677.1, 823.0), "policy-v1": (946.4, 897.7, 984.4),
             "policy-v2": (1116.5, 870.6, 1246.6), "reference": (1170.1, 1063.1, 1361.1)},
    (3, 200): {"base": (907.7, 856.9, 943.6), "human": (765.3, 711.9, 803.3), "policy-v1": (1019.0, 973.4, 1064.1),
               "policy-v2": (1107.4, 1061.5, 1171.2), "reference": (1200.6, 1148.4, 1254.3)},
}


@pytest.mark.parametrize("data", list(BEFORE), ids=lambda d: f"seed{d[0]}-{d[1]}rankings")
def test_the_numpy_bootstrap_gives_the_intervals_of_the_python_one(data):
    board = board_from_rows(_rankings(*data), bootstrap=200, seed=0)
    assert {r["source"]: (r["rating"], r["ci_low"], r["ci_high"]) for r in board} == BEFORE[data]


@pytest.mark.django_db
def test_the_board_is_computed_once_per_state_of_the_pairs_and_versions(monkeypatch):
    alice = f.user("alice")
    proj = f.project(k=2, annotators=[alice])
    for i in range(4):
        t = f.task(proj, texts=[f"old {i}", f"new {i}"])
        Candidate.objects.filter(pk=t.candidate_ids[0]).update(source="policy-v1")
        Candidate.objects.filter(pk=t.candidate_ids[1]).update(source="policy-v2")

    def rank_one():
        a = queue.next_task(annotator=alice, project=proj)
        old, new = RankingTask.objects.get(pk=a.task_id).candidate_ids
        queue.submit_ranking(annotator=alice, task_id=a.task_id, ordering=[[new], [old]], client_uuid=uuid.uuid4())

    rank_one()
    fits = []
    real = leaderboard_module.board_from_rows
    monkeypatch.setattr(leaderboard_module, "board_from_rows", lambda *a, **kw: fits.append(1) or real(*a, **kw))
    first = leaderboard(proj, bootstrap=20)
    assert leaderboard(proj, bootstrap=20) == first and len(fits) == 1  # a second view: from the cache
    rank_one()
    assert leaderboard(proj, bootstrap=20)[0]["comparisons"] == 2 and len(fits) == 2  # a new ranking: fitted again
    leaderboard(proj, bootstrap=20, split="eval")
    assert len(fits) == 3  # another prompt set, another entry
