"""Data for the training pages' tests: ranked tasks with candidates from several sources, and a round
whose steps, curves, versions and samples are written directly (no worker, no engine), so pages and
screenshots are deterministic."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from annotation.models import Candidate, RankingTask
from annotation.services import queue
from rlhf.models import GeneratedCandidate, ModelVersion, RunTask, TrainingRun
from rlhf.services import activate_versions, base_policy, start_round
from tests import factories as f

SOURCES = ("policy-v1", "base", "base", "reference")


def client_for(user=None) -> Client:
    """A browser-like client, logged in as ``user`` (anonymous without one)."""
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def rank(project, annotator, n: int, *, sources=SOURCES, prefer=("reference", "policy-v1", "base")) -> None:
    """``n`` new tasks whose candidates come from ``sources``, ranked by ``annotator``: best source in
    ``prefer`` first, except every third ranking, which puts the first two groups the other way round."""
    for i in range(n):
        task = f.task(project, priority=1e6)  # ahead of any other open task
        cands = list(Candidate.objects.filter(pk__in=task.candidate_ids).order_by("pk"))
        for cand, source in zip(cands, sources, strict=True):
            Candidate.objects.filter(pk=cand.pk).update(source=source)
            cand.source = source
        groups = [[c.pk for c in cands if c.source == s] for s in prefer]
        groups = [g for g in groups if g]
        if i % 3 == 2 and len(groups) > 1:
            groups[0], groups[1] = groups[1], groups[0]
        assignment = queue.next_task(annotator=annotator, project=project)
        assert assignment.task_id == task.pk
        queue.submit_ranking(annotator=annotator, task_id=task.pk, ordering=groups, client_uuid=uuid.uuid4())


def curve(n: int, start: float, end: float, *, wiggle: float = 0.0, shape: float = 4.0) -> list[float]:
    """``n`` values going from ``start`` to ``end`` exponentially, with a deterministic wiggle."""
    return [
        end + (start - end) * math.exp(-shape * i / max(n - 1, 1)) + wiggle * math.sin(1.7 * i) * (1 - i / n)
        for i in range(n)
    ]


def reward_metrics(n: int = 30) -> list[dict]:
    loss, acc = curve(n, 0.69, 0.36, wiggle=0.03), curve(n, 0.5, 0.81, wiggle=0.04)
    rows = [{"step": 0, "total_steps": n, "eval/accuracy": 0.52, "eval/loss": 0.69}]
    rows += [{"step": i + 1, "total_steps": n, "loss": round(loss[i], 4), "train/accuracy": round(acc[i], 4)} for i in range(n)]
    rows.append({"step": n, "total_steps": n, "eval/accuracy": 0.78, "eval/loss": 0.47})
    return rows


def ppo_metrics(n: int = 40) -> list[dict]:
    loss, score = curve(n, 0.42, 0.11, wiggle=0.05), curve(n, -0.35, 0.62, wiggle=0.06, shape=2.5)
    kl = curve(n, 0.0, 0.085, wiggle=0.004, shape=2.0)
    return [
        {"step": i + 1, "total_steps": n, "loss": round(loss[i], 4), "objective/scores": round(score[i], 4),
         "objective/kl": round(kl[i], 4), "policy/entropy": round(2.1 - 0.4 * i / n, 4)}
        for i in range(n)
    ]


def fake_round(project, user, *, algorithm: str = "ppo", generate_tasks: int = 3) -> TrainingRun:
    """A finished round as a worker would have left it: steps succeeded with metrics and logs,
    reward-v1 and policy-v1 registered and active, candidates of policy-v1 open as new tasks."""
    round_run = start_round(project=project, user=user, params={"algorithm": algorithm}, enqueue=False)
    steps = {s.kind: s for s in round_run.steps.all()}
    now = timezone.now()
    started = now - timedelta(minutes=9)
    base = base_policy(project)
    snapshot = {"until": now.isoformat(), "rankings": 12, "last_ranking_id": 12, "pairs": 60}
    for i, step in enumerate(sorted(steps.values(), key=lambda s: s.position)):
        step.state = "succeeded"
        step.started_at = started + timedelta(minutes=i)
        step.finished_at = started + timedelta(minutes=i + 1)
        step.step = step.total_steps = 1
        step.log_tail = f"INFO rlhf.engine: {step.kind} finished\n"
        step.save()
    steps["export"].snapshot = snapshot
    steps["export"].save()
    reward_run, policy_run = steps["reward"], steps[algorithm]
    reward_run.metrics, reward_run.step, reward_run.total_steps = reward_metrics(), 30, 30
    reward_run.snapshot = snapshot
    reward_run.result = {"eval": {"accuracy": 0.78, "loss": 0.47}, "pairs": 60}
    reward_run.save()
    policy_run.metrics, policy_run.step, policy_run.total_steps = ppo_metrics(), 40, 40
    policy_run.result = {"loss": 0.11, "objective/kl": 0.085, "objective/scores": 0.62}
    policy_run.log_tail = "".join(f"INFO rlhf.engine.ppo: step {i}/40 loss={v:.3f}\n" for i, v in enumerate(curve(40, 0.42, 0.11), 1))
    policy_run.save()
    reward = ModelVersion.objects.create(
        project=project, kind="reward", label="reward-v1", base_model=base.base_model, path="/srv/runs/reward",
        metrics=reward_run.result, run=reward_run,
    )
    policy = ModelVersion.objects.create(
        project=project, kind="policy", label="policy-v1", parent=base, reward_model=reward,
        base_model=base.base_model, path="/srv/runs/policy", run=policy_run,
        metrics={"train": policy_run.result, "eval": {"reward_model/accuracy": 0.78, "bleu": 21.4, "rougeL": 0.41}},
    )
    policy_run.input_versions.add(base, reward)
    activate_versions(reward, policy)
    gen = steps["generate"]
    gen.input_versions.add(policy)
    for _ in range(generate_tasks):
        task = f.task(project, source="policy-v1")
        RankingTask.objects.filter(pk=task.pk).update(origin=f"run-{gen.pk}")
        RunTask.objects.create(task=task, run=gen)  # what rlhf.lineage.open_linked_tasks writes
        GeneratedCandidate.objects.bulk_create(
            GeneratedCandidate(candidate_id=pk, model_version=policy, run=gen) for pk in task.candidate_ids
        )
    gen.result = {"tasks": generate_tasks, "candidates": generate_tasks * project.candidates_per_task}
    gen.save()
    round_run.state, round_run.started_at, round_run.finished_at = "succeeded", started, now
    round_run.snapshot = snapshot
    round_run.save()
    return round_run
