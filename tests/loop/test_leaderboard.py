"""The Bradley–Terry leaderboard of model versions from human rankings."""

import random
import uuid
from collections import Counter

import pytest

from annotation.models import Candidate, RankingTask
from annotation.services import queue
from rlhf.leaderboard import fit_bradley_terry, leaderboard
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
