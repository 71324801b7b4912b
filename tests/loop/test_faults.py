"""Faults under load, in seconds (bench/faults.py measures them at length): jobs Redis lost, a worker
killed mid-step, the database restarting under the web tier and under a training step, and submits
sent again after their answer was lost.

Personas: alice is the project's admin, bob an annotator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework.test import APIClient

from annotation.models import PreferencePair, Ranking, RankingTask
from annotation.services import queue as q
from lensloop.queue import redis_connection
from rlhf.jobs import _claim, run_step
from rlhf.models import TrainingRun
from rlhf.runner import run_engine
from rlhf.services import reap_stale_runs, requeue_lost_steps, resume_round, start_round
from rlhf.steps import STEPS
from tests import factories as f
from tests.support import ROOT, child_env, start_worker

pytestmark = pytest.mark.django_db(transaction=True)

S = TrainingRun.State
# An "engine" that sleeps instead of training (LENSLOOP_ENGINE_LAUNCH replaces `python`): a step that
# runs for as long as a test needs, without a model. `exec` keeps the worker's PR_SET_PDEATHSIG.
SLEEPING_ENGINE = "sh -c 'exec sleep 600' sh"


@pytest.fixture
def ranked_project():
    """A project with one ranking (so a round may start), alice its admin, bob its annotator."""
    alice, bob = f.user("alice", is_staff=True), f.user("bob")
    proj = f.project("faults", k=4, admins=[alice], annotators=[bob])
    task = f.task(proj)
    q.next_task(annotator=bob, project=proj)
    q.submit_ranking(annotator=bob, task_id=task.pk, ordering=[[c] for c in task.candidate_ids], client_uuid=uuid.uuid4())
    return proj


def _steps(round_run) -> list[TrainingRun]:
    return list(round_run.steps.order_by("position"))


def _age(*runs: TrainingRun, seconds: int = 120) -> None:
    """Make runs look created (and finished, where they are) `seconds` ago."""
    then = timezone.now() - timedelta(seconds=seconds)
    for run in runs:
        TrainingRun.objects.filter(pk=run.pk).update(created_at=then)
        TrainingRun.objects.filter(pk=run.pk, finished_at__isnull=False).update(finished_at=then)


def _wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _job_status(run: TrainingRun) -> str | None:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    run.refresh_from_db()
    try:
        return Job.fetch(run.job_id, connection=redis_connection()).get_status()
    except NoSuchJobError:
        return None


# --- Redis lost the jobs ---------------------------------------------------------------------------------


def test_a_round_whose_jobs_redis_lost_is_enqueued_again(ranked_project):
    """A Redis restarted without persistence leaves a round queued with no job to run it; the
    housekeeping enqueues its first step again (and the steps after it)."""
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1})
    first, *rest = _steps(round_run)
    assert _job_status(first) == "queued"
    redis_connection().flushdb()  # what a restart without persistence does
    _age(first, *rest)

    assert [run.pk for run in requeue_lost_steps()] == [first.pk]
    assert _job_status(first) == "queued"
    assert _job_status(rest[0]) == "deferred", "the steps after it are chained again behind it"
    assert requeue_lost_steps() == [], "a step whose job is queued is left alone"


def test_the_next_step_of_a_round_is_enqueued_again_when_its_job_was_lost_after_the_step_before(ranked_project):
    """The step before succeeded while Redis was away, so nothing enqueued the next one."""
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1})
    export, reward, *rest = _steps(round_run)
    TrainingRun.objects.filter(pk=round_run.pk).update(state=S.RUNNING)
    TrainingRun.objects.filter(pk=export.pk).update(state=S.SUCCEEDED, finished_at=timezone.now())
    redis_connection().flushdb()
    assert requeue_lost_steps() == [], "within the grace period rq may still be enqueuing it"

    _age(export, reward, *rest)
    assert [run.pk for run in requeue_lost_steps()] == [reward.pk]
    assert _job_status(reward) == "queued"


def test_requeue_leaves_finished_failed_and_waiting_rounds_alone(ranked_project):
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1})
    export = _steps(round_run)[0]
    redis_connection().flushdb()
    _age(*_steps(round_run))
    TrainingRun.objects.filter(pk=export.pk).update(state=S.RUNNING)
    assert requeue_lost_steps() == [], "a step whose predecessor is still running is not next"
    TrainingRun.objects.filter(pk=round_run.pk).update(state=S.FAILED)
    TrainingRun.objects.filter(pk=export.pk).update(state=S.SUCCEEDED, finished_at=timezone.now() - timedelta(hours=1))
    assert requeue_lost_steps() == [], "a failed round waits to be resumed"


def test_a_stray_job_for_a_step_whose_predecessor_has_not_succeeded_is_skipped(ranked_project):
    """A chain enqueued twice must never run a step before the step ahead of it has succeeded."""
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1}, enqueue=False)
    export, reward, *_ = _steps(round_run)
    assert _claim(reward.pk) is None
    reward.refresh_from_db()
    assert reward.state == S.QUEUED, "skipped, not consumed: its own job will still run it"

    claimed = _claim(export.pk)
    assert claimed is not None and claimed.state == S.RUNNING
    assert _claim(export.pk) is None, "claimed once only"


# --- a worker killed mid-step ----------------------------------------------------------------------------


def test_a_step_whose_worker_stopped_beating_fails_with_a_message_that_says_to_resume(ranked_project, monkeypatch):
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1}, enqueue=False)
    export, reward, *rest = _steps(round_run)
    TrainingRun.objects.filter(pk=round_run.pk).update(state=S.RUNNING)
    TrainingRun.objects.filter(pk=export.pk).update(state=S.SUCCEEDED, finished_at=timezone.now())
    TrainingRun.objects.filter(pk=reward.pk).update(state=S.RUNNING, heartbeat_at=timezone.now() - timedelta(minutes=5))

    assert reap_stale_runs() == 1
    reward.refresh_from_db()
    round_run.refresh_from_db()
    assert reward.state == S.FAILED and "worker" in reward.error and "resume" in reward.error
    assert round_run.state == S.FAILED and "step 2 (reward) failed" in round_run.error
    assert {r.state for r in TrainingRun.objects.filter(pk__in=[r.pk for r in rest])} == {S.CANCELLED}

    resumed = resume_round(round_run)
    assert resumed.state == S.QUEUED
    assert [s.state for s in _steps(round_run)] == [S.SUCCEEDED] + [S.QUEUED] * (1 + len(rest))


def test_a_step_beats_while_it_runs_even_without_an_engine(ranked_project, monkeypatch):
    """An export of a large project runs for minutes without engine polls; the reaper must not take it
    for a step whose worker died."""
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1}, enqueue=False)
    export = _steps(round_run)[0]
    beats = []

    def slow_export(run):
        for _ in range(2):
            time.sleep(0.6)
            beats.append(TrainingRun.objects.get(pk=run.pk).heartbeat_at)

    monkeypatch.setattr("rlhf.jobs.HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setitem(STEPS, TrainingRun.Kind.EXPORT, slow_export)
    assert run_step(export.pk) == "succeeded"
    export.refresh_from_db()
    assert beats[0] < beats[1] <= export.heartbeat_at


@pytest.mark.slow
def test_a_worker_killed_mid_step_is_found_by_the_next_worker_and_the_round_resumes(ranked_project):
    """SIGKILL the worker while its step's engine runs; the worker a supervisor starts next fails the
    step on its first housekeeping pass, and the resumed round runs the step again."""
    env = {"LENSLOOP_ENGINE_LAUNCH": SLEEPING_ENGINE, "LENSLOOP_RUN_STALE_SECONDS": "3"}
    round_run = start_round(project=ranked_project, params={"generate_prompts": 1})
    reward = _steps(round_run)[1]
    worker = start_worker("train", "generate", **env)
    second = None
    try:
        _wait_for(lambda: TrainingRun.objects.filter(pk=reward.pk, state=S.RUNNING, pid__isnull=False).exists(),
                  timeout=120, what="the reward step to start its engine")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        second = start_worker("train", "generate", **env)
        _wait_for(lambda: TrainingRun.objects.get(pk=reward.pk).state == S.FAILED, timeout=60,
                  what="the next worker to fail the step of the killed one")
        reward.refresh_from_db()
        assert "worker" in reward.error and "resume" in reward.error

        resume_round(TrainingRun.objects.get(pk=round_run.pk))
        _wait_for(lambda: TrainingRun.objects.filter(pk=reward.pk, state=S.RUNNING, pid__isnull=False).exists(),
                  timeout=60, what="the resumed round to run the step again")
    finally:
        TrainingRun.objects.filter(round=round_run).update(state=S.CANCELLED)  # the engine is killed by its job
        for proc in (worker, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


# --- the database restarting -----------------------------------------------------------------------------


def test_a_training_step_outlives_a_database_that_drops_its_connection(ranked_project, monkeypatch, tmp_path, settings):
    """The engine needs no database: a step polling it through a restart goes on, and its figures are
    written once the database answers again. Before, the first failed poll killed the engine."""
    engine = tmp_path / "engine.sh"  # run as `sh engine.sh -m rlhf.engine CMD --config C --run-dir DIR`
    engine.write_text(
        """sleep 1; echo '{"step": 1, "total_steps": 2, "loss": 0.5}' >> "$7/metrics.jsonl"; sleep 3\n"""
        """echo '{"step": 2, "total_steps": 2, "loss": 0.25}' >> "$7/metrics.jsonl"\n"""
        """echo '{"status": "ok", "loss": 0.25}' > "$7/result.json"\n"""
    )
    settings.LENSLOOP_ENGINE_LAUNCH = f"sh {engine}"
    monkeypatch.setattr("rlhf.runner.POLL_SECONDS", 0.2)
    run = TrainingRun.objects.create(project=ranked_project, kind="reward", state=S.RUNNING,
                                     run_dir=str(tmp_path / "run"))
    real_update, calls = QuerySet.update, {"n": 0}

    def flaky_update(self, **kwargs):
        calls["n"] += 1
        if 3 <= calls["n"] <= 10:  # a restart: several polls in a row meet no database
            raise OperationalError("server closed the connection unexpectedly")
        return real_update(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", flaky_update)
    result = run_engine(run, "train-reward", {})
    monkeypatch.undo()

    assert result == {"status": "ok", "loss": 0.25}
    assert calls["n"] > 10, "the database was unreachable for several polls"
    run.refresh_from_db()
    assert run.step == 2 and [m["loss"] for m in run.metrics] == [0.5, 0.25]


def test_a_database_outage_answers_503_in_the_api_error_shape(ranked_project, monkeypatch):
    """Clients (the ranking page) try again on it; a 500 said there was a bug."""
    bob = ranked_project.memberships.get(user__username="bob").user

    def unreachable(**kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr("annotation.services.queue.next_task", unreachable)
    client = APIClient()
    client.force_authenticate(bob)
    response = client.post("/api/projects/faults/next/")
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable" and "try again" in response.json()["detail"]
    assert response["Retry-After"]


@pytest.mark.slow
def test_the_web_tier_answers_after_the_database_dropped_its_connections(ranked_project):
    """gunicorn keeps its connections (CONN_MAX_AGE); after a PostgreSQL restart each kept connection is
    dead. With health checks the next request opens a new one instead of answering 500."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (pg_terminate_backend)")
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=ranked_project.memberships.get(user__username="bob").user).key
    port = _free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "lensloop.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", "1", "--log-level", "warning"],
        env=child_env(DB_CONN_MAX_AGE="600"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for(lambda: _get(port, token) == 200, timeout=60, what="gunicorn to answer")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert cursor.fetchall(), "gunicorn kept no connection to kill"
        assert [_get(port, token) for _ in range(3)] == [200, 200, 200]
    finally:
        web.terminate()
        web.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, token: str) -> int | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/projects/", headers={"Authorization": "Token " + token})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


# --- submits sent again ----------------------------------------------------------------------------------


def test_a_submit_sent_again_after_its_answer_was_lost_is_stored_once(ranked_project):
    """The server stored the ranking but the answer never arrived (a web worker killed, a dropped
    connection); the page sends the same client_uuid again, twice, once asking for the next task."""
    bob = ranked_project.memberships.get(user__username="bob").user
    task = f.task(ranked_project)
    f.task(ranked_project)
    q.next_task(annotator=bob, project=ranked_project)
    body = {"ordering": [[c] for c in reversed(task.candidate_ids)], "client_uuid": str(uuid.uuid4())}
    first = q.submit_ranking(annotator=bob, task_id=task.pk, **body)  # stored; its answer is lost
    client = APIClient()
    client.force_authenticate(bob)

    again = client.post(f"/api/tasks/{task.pk}/submit/", body, format="json")
    once_more = client.post(f"/api/tasks/{task.pk}/submit/?next=1", body, format="json")

    assert again.status_code == once_more.status_code == 200
    assert again.json()["id"] == once_more.json()["id"] == first.ranking.pk
    assert once_more.json()["next_task"] is not None, "the page moves on to its next task"
    task.refresh_from_db()
    assert Ranking.objects.filter(task=task).count() == 1 and task.completed_count == 1
    assert PreferencePair.objects.filter(ranking=first.ranking).count() == 6
    assert RankingTask.objects.get(pk=task.pk).leased_count == 0
