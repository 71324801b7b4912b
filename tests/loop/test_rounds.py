"""The closed loop with a real Redis, real rq worker processes and the real engine in subprocesses:
rounds end to end, and the faults — a failing step, a worker killed with SIGKILL, cancel, resume."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from annotation.models import Candidate, RankingTask
from rlhf.leaderboard import leaderboard
from rlhf.models import ModelVersion, TrainingRun
from rlhf.services import (
    LoopError,
    RoundInProgress,
    cancel_run,
    reap_stale_runs,
    resume_round,
    start_generate,
    start_round,
)
from rlhf.simulate import simulate
from tests.loop.conftest import FAST_ROUND
from tests.support import child_env, manage, start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _burst():
    done = manage("worker", "train", "generate", "--burst", env=child_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _steps(round_run):
    return {s.kind: s for s in round_run.steps.all()}


def _explain(round_run) -> str:
    return "; ".join(f"{s.position}-{s.kind}: {s.state} {s.error[-800:]}" for s in round_run.steps.order_by("position"))


def _wait_for(predicate, timeout=180, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("algorithm", ["sft"])
def test_a_round_trains_a_new_policy_whose_samples_become_open_tasks(loop_project, algorithm):
    round_run = start_round(project=loop_project, params={**FAST_ROUND, "algorithm": algorithm})
    _burst()
    round_run.refresh_from_db()
    assert round_run.state == "succeeded", _explain(round_run)
    steps = _steps(round_run)
    policy = ModelVersion.objects.get(project=loop_project, kind="policy", active=True)
    reward = ModelVersion.objects.get(project=loop_project, kind="reward", active=True)
    assert policy.label == "policy-v1" and policy.parent.label == "base" and policy.reward_model == reward
    assert policy.run == steps[algorithm] and reward.run == steps["reward"]
    assert steps["reward"].snapshot["pairs"] > 0 and steps["reward"].metrics, "the reward run logged no metrics"
    assert "eval" in policy.metrics
    new_tasks = RankingTask.objects.filter(project=loop_project, origin=f"run-{steps['generate'].pk}", state="open")
    assert new_tasks.count() >= 1
    sources = set(Candidate.objects.filter(pk__in=new_tasks.first().candidate_ids).values_list("source", flat=True))
    assert sources == {"policy-v1"}

    # Compare the new policy with the base: every task mixes both; human rankings rank the versions.
    compare = start_generate(project=loop_project, prompts=4, compare=("base", "policy-v1"))
    _burst()
    compare.refresh_from_db()
    assert compare.state == "succeeded", compare.error
    mixed = RankingTask.objects.filter(project=loop_project, origin=f"run-{compare.pk}")
    assert mixed.exists()
    for task in mixed:
        assert set(Candidate.objects.filter(pk__in=task.candidate_ids).values_list("source", flat=True)) == {"base", "policy-v1"}
    RankingTask.objects.filter(project=loop_project).exclude(origin=f"run-{compare.pk}").update(state="closed")
    simulate(loop_project, annotators=2, noise=0.0)
    assert {row["source"] for row in leaderboard(loop_project, bootstrap=20)} == {"base", "policy-v1"}


def test_a_standalone_generate_run_fills_the_queue_from_the_base_policy(loop_project):
    run = start_generate(project=loop_project, prompts=4)
    _burst()
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert run.result["tasks"] >= 1
    opened = RankingTask.objects.filter(project=loop_project, origin=f"run-{run.pk}")
    assert opened.count() == run.result["tasks"]
    for task in opened:
        texts = list(Candidate.objects.filter(pk__in=task.candidate_ids).values_list("text", flat=True))
        assert len(texts) == 4 == len(set(texts))
        assert set(Candidate.objects.filter(pk__in=task.candidate_ids).values_list("source", flat=True)) == {"base"}


def test_two_rounds_of_one_project_never_run_at_once(loop_project):
    start_round(project=loop_project, params=FAST_ROUND, enqueue=False)
    with pytest.raises(RoundInProgress):
        start_round(project=loop_project, params=FAST_ROUND, enqueue=False)


def test_a_rounds_snapshot_holds_the_pairs_new_since_the_last_finished_round(loop_project, tmp_path):
    """Iterative DPO trains on those: they rank the current policy's own samples."""
    from annotation.models import PreferencePair
    from annotation.services.imports import import_bundle
    from rlhf.engine.demo import world
    from rlhf.jobs import run_step

    first = start_round(project=loop_project, params=FAST_ROUND, enqueue=False)
    assert run_step(first.steps.get(kind="export").pk) == "succeeded"
    snapshot = first.steps.get(kind="export").snapshot
    assert snapshot["new_records"] == "" and snapshot["new_pairs"] == snapshot["pairs"]  # no round before
    TrainingRun.objects.filter(round=first).update(state="succeeded")
    TrainingRun.objects.filter(pk=first.pk).update(state="succeeded", snapshot=snapshot)
    # Pairs to train on: those of held-out prompts go to the held-out file, not to pairs or new_pairs.
    train_pairs = PreferencePair.objects.filter(project=loop_project, prompt__split="train")
    before = train_pairs.count()

    world.write_demo_manifest(tmp_path / "more", n=8, seed=9, k=4)
    import_bundle(project=loop_project, path=tmp_path / "more")
    simulate(loop_project, annotators=2, noise=0.0, limit=8, seed=3)
    second = start_round(project=loop_project, params={**FAST_ROUND, "algorithm": "dpo"}, enqueue=False)
    assert run_step(second.steps.get(kind="export").pk) == "succeeded"
    snapshot = second.steps.get(kind="export").snapshot
    new = train_pairs.count() - before
    assert new > 0 and snapshot["new_pairs"] == new and snapshot["pairs"] == before + new
    assert len(Path(snapshot["new_records"]).read_text().splitlines()) == new


def test_bad_round_parameters_are_refused_with_a_reason(loop_project):
    with pytest.raises(LoopError, match="algorithm must be one of"):
        start_round(project=loop_project, params={"algorithm": "reinforce"}, enqueue=False)
    with pytest.raises(LoopError, match=r"round: unknown field\(s\) \['epochs'\]"):
        start_round(project=loop_project, params={"epochs": 3}, enqueue=False)
    with pytest.raises(LoopError, match="verifiable_reward 'truth' is not one of"):
        start_round(project=loop_project, params={"verifiable_reward": "truth"}, enqueue=False)
    with pytest.raises(LoopError, match="needs a verifiable_reward"):
        start_round(project=loop_project, params={"use_reward_model": False}, enqueue=False)
    with pytest.raises(LoopError, match="needs algorithm ppo or grpo"):
        start_round(project=loop_project, params={"algorithm": "dpo", "use_reward_model": False,
                                                  "verifiable_reward": "demo_reward"}, enqueue=False)
    with pytest.raises(LoopError, match=r"round\.reward_lora: expected true or false, got 'no'"):
        start_round(project=loop_project, params={"reward_lora": "no"}, enqueue=False)
    with pytest.raises(LoopError, match="qlora needs reward_lora=true"):
        start_round(project=loop_project, params={"qlora": True, "reward_lora": False}, enqueue=False)
    with pytest.raises(LoopError, match=r"round\.lora_modules_to_save: expected a list of names"):
        start_round(project=loop_project, params={"lora_modules_to_save": 3}, enqueue=False)
    with pytest.raises(LoopError, match="lora_target_modules must be a list of module names"):
        start_round(project=loop_project, params={"lora_target_modules": [""]}, enqueue=False)
    # Values every web check passes but an engine step would refuse minutes later, in its subprocess:
    with pytest.raises(LoopError, match=r"the ppo step would refuse this round: .*policy_batch_size"):
        start_round(project=loop_project, params={"policy_batch_size": 3}, enqueue=False)
    with pytest.raises(LoopError, match=r"the grpo step would refuse this round: .*num_generations"):
        start_round(project=loop_project, params={"algorithm": "grpo", "policy_batch_size": 6}, enqueue=False)
    with pytest.raises(LoopError, match="the dpo step would refuse this round: beta must be positive"):
        start_round(project=loop_project, params={"algorithm": "dpo", "beta": 0}, enqueue=False)
    assert not TrainingRun.objects.filter(project=loop_project).exists()


def test_a_failing_step_fails_the_round_stops_the_chain_and_keeps_the_old_policy(loop_project):
    base = ModelVersion.objects.create(
        project=loop_project, kind="policy", label="base", base_model="/nonexistent/model", path="", active=True
    )
    round_run = start_round(project=loop_project, params=FAST_ROUND)
    _burst()
    round_run.refresh_from_db()
    steps = _steps(round_run)
    assert round_run.state == "failed" and "reward" in round_run.error
    assert steps["export"].state == "succeeded"
    assert steps["reward"].state == "failed" and "/nonexistent/model" in steps["reward"].error
    assert {steps[k].state for k in ("ppo", "evaluate", "register", "generate")} == {"cancelled"}
    assert ModelVersion.objects.get(project=loop_project, kind="policy", active=True) == base
    # Fix the cause, resume: the round continues from the failed step.
    ModelVersion.objects.filter(pk=base.pk).update(base_model=loop_project.base_model)
    TrainingRun.objects.filter(pk=round_run.pk).update(config={**round_run.config, "algorithm": "sft"})
    TrainingRun.objects.filter(pk=steps["ppo"].pk).update(kind="sft")
    resume_round(round_run)
    _burst()
    round_run.refresh_from_db()
    assert round_run.state == "succeeded", _explain(round_run)
    assert ModelVersion.objects.get(project=loop_project, kind="policy", active=True).label == "policy-v1"


def test_a_worker_killed_mid_step_is_detected_and_its_engine_dies_with_it(loop_project, monkeypatch, settings):
    round_run = start_round(project=loop_project, params={**FAST_ROUND, "reward_epochs": 400.0})
    worker = start_worker("train", "generate")
    try:
        _wait_for(
            lambda: TrainingRun.objects.filter(round=round_run, kind="reward", state="running", pid__isnull=False).exists(),
            what="the reward step to start its engine",
        )
        reward = TrainingRun.objects.get(round=round_run, kind="reward")
        engine_pid = reward.pid
        children = _children(worker.pid)
        assert engine_pid in children
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    _wait_for(lambda: not _alive(engine_pid), timeout=30, what="the orphaned engine to die")
    _wait_for(lambda: not any(_alive(pid) for pid in children), timeout=30, what="every child of the worker to die")
    settings.LENSLOOP_RUN_STALE_SECONDS = 1
    time.sleep(1.5)
    assert reap_stale_runs() == 1
    round_run.refresh_from_db()
    reward.refresh_from_db()
    assert reward.state == "failed" and "worker" in reward.error
    assert round_run.state == "failed"
    assert not ModelVersion.objects.filter(project=loop_project, kind="reward").exists()


def test_cancel_kills_a_running_step_and_the_worker_carries_on(loop_project):
    round_run = start_round(project=loop_project, params={**FAST_ROUND, "reward_epochs": 400.0})
    worker = start_worker("train", "generate")
    try:
        _wait_for(
            lambda: TrainingRun.objects.filter(round=round_run, kind="reward", state="running", pid__isnull=False).exists(),
            what="the reward step to start",
        )
        engine_pid = TrainingRun.objects.get(round=round_run, kind="reward").pid
        cancel_run(round_run)
        _wait_for(lambda: not _alive(engine_pid), timeout=30, what="the engine to be killed")
        _wait_for(
            lambda: not TrainingRun.objects.filter(round=round_run, state__in=["queued", "running"]).exists(),
            timeout=60, what="every step to end",
        )
        assert worker.poll() is None, "the worker died with the cancelled job"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    round_run.refresh_from_db()
    assert round_run.state == "cancelled"
    assert set(round_run.steps.values_list("state", flat=True)) <= {"cancelled", "succeeded"}
    assert not ModelVersion.objects.filter(project=loop_project, kind="reward").exists()


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


# GRPO on the ground truth alone (a benchmark's upper bound), the demo model's RL configuration for PPO
ENGINE_PARAMS = {"ppo": {"lora_modules_to_save": ["lm_head"], "verifiable_reward": "demo_reward", "reward_lr": 1e-3,
                         "reward_lora": False},
                 "grpo": {"use_reward_model": False, "verifiable_reward": "demo_reward"}, "dpo": {}}


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "dpo"])
def test_each_policy_algorithm_completes_a_round_with_a_tiny_budget(loop_project, algorithm):
    params = {**FAST_ROUND, "algorithm": algorithm, "policy_steps": 2, **ENGINE_PARAMS[algorithm]}
    round_run = start_round(project=loop_project, params=params)
    _burst()
    round_run.refresh_from_db()
    assert round_run.state == "succeeded", _explain(round_run)
    steps = _steps(round_run)
    policy = ModelVersion.objects.get(project=loop_project, kind="policy", active=True)
    assert policy.run == steps[algorithm] and (Path(policy.path) / "adapter_config.json").is_file()
    assert steps[algorithm].metrics and steps[algorithm].metrics[-1]["total_steps"] >= 1
    opened = RankingTask.objects.filter(project=loop_project, origin=f"run-{steps['generate'].pk}")
    assert opened.exists()
    assert set(Candidate.objects.filter(pk__in=opened.first().candidate_ids).values_list("source", flat=True)) == {
        policy.label
    }
    # The round's engine settings reach the engine, and lineage says what the policy learnt from.
    config = steps[algorithm].config
    if algorithm == "ppo":
        assert config["model"]["lora_modules_to_save"] == ["lm_head"] and config["verifiable_reward"] == "demo_reward"
        assert config["reward_model_path"] and policy.reward_model == steps["reward"].versions.get()
        assert steps["reward"].config["lr"] == 1e-3
        # A reward model whose whole backbone trained, saved whole, and read by PPO.
        reward = steps["reward"].versions.get()
        assert steps["reward"].config["model"]["lora"] is False and reward.weights == "full"
        assert (Path(reward.path) / "backbone").is_dir() and not (Path(reward.path) / "adapter").exists()
    if algorithm == "grpo":
        assert config["reward_model_path"] == "" and config["verifiable_reward"] == "demo_reward"
        assert config["beta"] == 0.05  # the round's KL coefficient
        assert policy.reward_model is None


def test_a_ranking_rejected_in_review_leaves_the_rounds_export_and_the_snapshot_says_so(loop_project):
    from annotation.models import PreferencePair, Ranking
    from annotation.services.reviews import ranking_review
    from rlhf.jobs import run_step

    admin = loop_project.memberships.filter(role="admin").first().user
    ranking = Ranking.objects.filter(project=loop_project, task__prompt__split="train").order_by("id").first()
    ranking_review(ranking_id=ranking.pk, project=loop_project, reviewer=admin, decision="reject")
    round_run = start_round(project=loop_project, params=FAST_ROUND, enqueue=False)
    assert run_step(round_run.steps.get(kind="export").pk) == "succeeded"
    snapshot = round_run.steps.get(kind="export").snapshot
    kept = PreferencePair.objects.filter(project=loop_project, prompt__split="train").exclude(ranking=ranking)
    assert snapshot["rejected_rankings"] == 1 and snapshot["pairs"] == kept.count()
    exported = {json.loads(line)["ranking_id"] for line in Path(snapshot["records"]).read_text().splitlines()}
    assert ranking.pk not in exported
