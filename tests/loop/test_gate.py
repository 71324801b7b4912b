"""The promotion gate: a round's new policy becomes active only when it is not worse than the active one on
held-out prompts beyond noise. The better and worse cases are built by feeding the gate evaluation figures
(a fake engine, tests/loop/test_heldout.py) or side-by-side rankings; one round runs the real engine."""

from __future__ import annotations

import uuid

import pytest

from annotation.models import Candidate, RankingTask
from annotation.services import queue
from annotation.services.projects import member_set
from rlhf import gate
from rlhf.models import ModelVersion, TrainingRun
from rlhf.services import activate_version, loop_settings_set
from tests import factories as f
from tests.loop.test_heldout import EVEN, FakeEngine, run_round

pytestmark = pytest.mark.django_db


def _figures(diff: tuple[float, float, float], rm: tuple[float, float, float] = (0.0, -0.1, 0.1), **extra) -> dict:
    d, low, high = diff
    r, r_low, r_high = rm
    return {**EVEN, "diff/verifiable": d, "diff/verifiable_low": low, "diff/verifiable_high": high,
            "policy/verifiable": 0.5 + d, "diff/reward_model_score": r, "diff/reward_model_score_low": r_low,
            "diff/reward_model_score_high": r_high, **extra}


WORSE = _figures((-0.2, -0.3, -0.1))
BETTER = _figures((0.15, 0.05, 0.25))
NOISE = _figures((-0.03, -0.12, 0.06))


# ---- decisions from figures ---------------------------------------------------------------------------------


def test_a_policy_worse_beyond_noise_fails_and_one_within_noise_passes():
    worse = gate.decide_verifiable(WORSE, new="policy-v2", active="policy-v1", reward="demo_reward")
    assert worse.state == "failed" and "worse than policy-v1 beyond noise" in worse.reason
    assert "[-0.300, -0.100]" in worse.reason and "6 held-out prompts" in worse.reason
    assert gate.decide_verifiable(NOISE, new="v2", active="v1", reward="r").state == "passed"
    assert gate.decide_verifiable(BETTER, new="v2", active="v1", reward="r").state == "passed"
    assert gate.decide_verifiable({"prompts": 6}, new="v2", active="v1", reward="r") is None


def test_the_human_gate_waits_for_rankings_then_judges_the_share_of_wins():
    tally = {"rankings": 3, "share": 0.2, "low": 0.0, "high": 0.4, "open_tasks": 5}
    assert gate.decide_human(tally, needed=10, new="v2", active="v1").state == "pending"
    assert gate.decide_human({**tally, "open_tasks": 0}, needed=10, new="v2", active="v1").state == "failed"
    enough = {"rankings": 10, "share": 0.45, "low": 0.3, "high": 0.6, "open_tasks": 2}
    assert gate.decide_human(enough, needed=10, new="v2", active="v1").state == "passed"
    none = {"rankings": 0, "share": float("nan"), "low": float("nan"), "high": float("nan"), "open_tasks": 0}
    assert "no side-by-side ranking" in gate.decide_human(none, needed=10, new="v2", active="v1").reason


def test_a_ranking_share_counts_ties_as_halves():
    assert gate.ranking_share([[1], [2, 3], [4]], new_ids={1, 2}, old_ids={3, 4}) == 3.5 / 4
    assert gate.ranking_share([[3], [1]], new_ids={1}, old_ids={3}) == 0.0
    assert gate.ranking_share([[1]], new_ids={1}, old_ids={9}) is None


def test_the_monitor_warns_when_the_reward_model_rises_while_the_held_out_score_falls():
    rising = _figures((-0.2, -0.3, -0.1), rm=(0.4, 0.2, 0.6))
    monitor = gate.overoptimisation(rising)
    assert monitor["warning"] and monitor["beyond_noise"] and monitor["truth_name"] == "verifiable reward"
    assert not gate.overoptimisation(BETTER)["warning"]
    one = gate.overoptimisation(_figures((-0.2, -0.3, -0.1), rm=(0.05, -0.05, 0.15)))
    assert one["warning"] and not one["beyond_noise"]
    # Opposite directions, both within noise: nothing to warn about.
    assert not gate.overoptimisation(_figures((-0.02, -0.07, 0.02), rm=(0.01, -0.07, 0.1)))["warning"]
    # Without a verifiable reward, people's share of wins is the truth.
    no_truth = {k: v for k, v in rising.items() if "verifiable" not in k}
    human = {"rankings": 20, "share": 0.3, "low": 0.15, "high": 0.45}
    assert gate.overoptimisation(no_truth, human)["warning"]
    assert gate.overoptimisation(no_truth)["truth"] is None


# ---- rounds with a verifiable gate ---------------------------------------------------------------------------


@pytest.fixture
def gated(loop_project):
    loop_settings_set(project=loop_project, promotion_gate="auto", gate_reward="demo_reward")
    return loop_project


def test_the_gate_keeps_a_worse_policy_inactive_and_says_why(gated, monkeypatch):
    engine = FakeEngine(WORSE)
    round_run = run_round(gated, engine, monkeypatch, algorithm="sft")
    assert engine.config("evaluate")["verifiable_reward"] == "demo_reward"
    policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
    assert policy.gate_state == "failed" and not policy.active
    assert "worse than base beyond noise" in policy.gate_reason
    assert ModelVersion.objects.get(project=gated, kind="policy", active=True).label == "base"
    assert ModelVersion.objects.get(project=gated, kind="reward").active, "the reward model is registered active"
    register = round_run.steps.get(kind="register")
    assert register.result["gate"] == "failed" and register.result["policy_active"] is False
    # New tasks come from the policy that stayed active.
    generated = RankingTask.objects.filter(origin=f"run-{round_run.steps.get(kind='generate').pk}")
    assert generated.exists()
    assert set(Candidate.objects.filter(pk__in=generated.first().candidate_ids).values_list("source", flat=True)) == {"base"}
    # A project admin can still make it active.
    activate_version(policy)
    policy.refresh_from_db()
    assert policy.active and policy.gate_state == "failed" and "Made active by hand" in policy.gate_reason


def test_the_gate_activates_a_better_policy_and_one_within_noise(gated, monkeypatch):
    for figures, label in ((BETTER, "policy-v1"), (NOISE, "policy-v2")):
        round_run = run_round(gated, FakeEngine(figures), monkeypatch, algorithm="sft")
        policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
        assert policy.label == label and policy.gate_state == "passed" and policy.active
        assert "not worse than" in policy.gate_reason
    # The second round compared with the first round's policy, the one active then.
    assert policy.gate["active"] == "policy-v1"


def test_with_the_gate_off_every_policy_becomes_active(gated, monkeypatch):
    loop_settings_set(project=gated, promotion_gate="off")
    round_run = run_round(gated, FakeEngine(WORSE), monkeypatch, algorithm="sft")
    policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
    assert policy.gate_state == "off" and policy.active


# ---- rounds with a human gate ----------------------------------------------------------------------------------


def _rank_gate_tasks(project, policy: ModelVersion, *, prefer_new: bool) -> int:
    """Rank every side-by-side task of ``policy``'s gate, new answers first (or last)."""
    bob = f.user("bob-gate")
    member_set(project=project, user=bob, role="annotator")
    done = 0
    tasks = RankingTask.objects.filter(project=project, origin=gate.gate_origin(policy))
    RankingTask.objects.filter(project=project).exclude(pk__in=tasks).update(state="closed")
    while (a := queue.next_task(annotator=bob, project=project)) is not None:
        ids = a.task.candidate_ids
        sources = dict(Candidate.objects.filter(pk__in=ids).values_list("pk", "source"))
        new = [c for c in ids if sources[c] == policy.label]
        old = [c for c in ids if sources[c] != policy.label]
        ordering = [new, old] if prefer_new else [old, new]
        queue.submit_ranking(annotator=bob, task_id=a.task_id, ordering=[g for g in ordering if g],
                             client_uuid=uuid.uuid4())
        done += 1
    return done


@pytest.mark.parametrize(("prefer_new", "state"), [(True, "passed"), (False, "failed")])
def test_the_human_gate_decides_from_side_by_side_rankings_of_held_out_prompts(loop_project, monkeypatch,
                                                                               prefer_new, state):
    loop_settings_set(project=loop_project, promotion_gate="human", gate_comparisons=4)
    round_run = run_round(loop_project, FakeEngine(_figures((0.0, -0.1, 0.1))), monkeypatch, algorithm="sft")
    policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
    assert policy.gate_state == "pending" and not policy.active and "waiting for side-by-side" in policy.gate_reason
    tasks = RankingTask.objects.filter(project=loop_project, origin=gate.gate_origin(policy))
    assert tasks.count() == 4 and {t.prompt.split for t in tasks} == {"eval"}
    sources = set(Candidate.objects.filter(pk__in=tasks.first().candidate_ids).values_list("source", flat=True))
    assert sources == {policy.label, "base"}
    assert gate.decide_pending_gates(loop_project) == [], "no ranking yet: still pending"
    assert _rank_gate_tasks(loop_project, policy, prefer_new=prefer_new) == 4
    decided = gate.decide_pending_gates(loop_project)
    policy.refresh_from_db()
    assert decided == [policy] and policy.gate_state == state and policy.active is (state == "passed")
    assert policy.gate["human"]["rankings"] == 4 and "4 side-by-side rankings" in policy.gate_reason


def test_the_human_gate_fails_at_once_when_the_reward_model_scores_the_new_policy_lower(loop_project, monkeypatch):
    loop_settings_set(project=loop_project, promotion_gate="human")
    figures = _figures((0.0, -0.1, 0.1), rm=(-0.5, -0.7, -0.3))
    round_run = run_round(loop_project, FakeEngine(figures), monkeypatch, algorithm="sft")
    policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
    assert policy.gate_state == "failed" and "reward model scores" in policy.gate_reason
    assert not RankingTask.objects.filter(origin=gate.gate_origin(policy)).exists()


def test_a_later_round_or_a_choice_by_hand_supersedes_a_pending_gate(loop_project, monkeypatch):
    loop_settings_set(project=loop_project, promotion_gate="human")
    first = ModelVersion.objects.get(run__round=run_round(loop_project, FakeEngine(), monkeypatch, algorithm="sft"),
                                     kind="policy")
    second = ModelVersion.objects.get(run__round=run_round(loop_project, FakeEngine(), monkeypatch, algorithm="sft"),
                                      kind="policy")
    first.refresh_from_db()
    assert first.gate_state == "superseded" and second.gate_state == "pending"
    activate_version(ModelVersion.objects.get(project=loop_project, label="base"))
    second.refresh_from_db()
    assert second.gate_state == "superseded" and "made active by hand" in second.gate_reason


# ---- one real round ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_round_evaluates_both_policies_on_the_held_out_prompts_and_the_gate_decides(loop_project):
    from rlhf.jobs import run_step
    from rlhf.services import start_round
    from tests.loop.conftest import FAST_ROUND

    loop_settings_set(project=loop_project, promotion_gate="auto", gate_reward="demo_reward")
    round_run = start_round(project=loop_project, params={**FAST_ROUND, "algorithm": "sft"}, enqueue=False)
    for step in round_run.steps.order_by("position"):
        assert run_step(step.pk) == "succeeded", TrainingRun.objects.get(pk=step.pk).error[-2000:]
    policy = ModelVersion.objects.get(run__round=round_run, kind="policy")
    figures = policy.metrics["eval"]
    held = loop_project.prompts.filter(split="eval").count()
    assert figures["prompts"] == held == figures["diff/verifiable_n"] == figures["policy/verifiable_n"]
    assert figures["diff/verifiable_low"] <= figures["diff/verifiable"] <= figures["diff/verifiable_high"]
    assert "diff/reward_model_score" in figures
    assert policy.gate_state in ("passed", "failed") and policy.gate_reason
    assert policy.active is (policy.gate_state == "passed")
    expected = "failed" if figures["diff/verifiable_high"] < 0 else "passed"
    assert policy.gate_state == expected, policy.gate_reason
