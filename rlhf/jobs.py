"""rq jobs of the loop. Thin: take a run id, re-fetch, check the state, call the step, record the result.

Idempotent: a job whose run is no longer queued (done, cancelled, or picked up twice) returns at once,
and so does a job whose step still waits for the step before it (a chain enqueued again by
``rlhf.services.requeue_lost_steps`` may leave an older copy of a job behind). Failures are recorded on
the run (and fail the round) rather than raised, so later steps of the chain still start, see the round
has failed and mark themselves cancelled. The final writes wait out a database restart.
"""

from __future__ import annotations

import logging
import threading
import traceback

from django.db import connection, transaction
from django.utils import timezone

from rlhf.models import TrainingRun
from rlhf.runner import DATABASE_GONE, Cancelled, EngineFailed, database_retry
from rlhf.services import fail_run, reap_stale_runs

log = logging.getLogger(__name__)
S = TrainingRun.State
HEARTBEAT_SECONDS = 10.0  # well inside LENSLOOP_RUN_STALE_SECONDS (90 by default)


def _claim(run_id: int) -> TrainingRun | None:
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.state != S.QUEUED:
            return None
        if run.round_id:
            round_run = TrainingRun.objects.select_for_update().get(pk=run.round_id)
            if round_run.state not in TrainingRun.ACTIVE_STATES:
                run.state = S.CANCELLED
                run.finished_at = timezone.now()
                run.save(update_fields=["state", "finished_at"])
                return None
            previous = TrainingRun.objects.filter(round_id=run.round_id, position=run.position - 1).first()
            if previous is not None and previous.state != S.SUCCEEDED:
                # Not this step's turn: the step before is still to run (or running). Only a stray copy
                # of a job meets this; the chain's own job comes after the step before has succeeded.
                log.warning("job for step %s of round %s skipped: step %s is %s", run.position, run.round_id,
                            previous.position, previous.state)
                return None
            if round_run.state == S.QUEUED:
                round_run.state = S.RUNNING
                round_run.started_at = timezone.now()
                round_run.save(update_fields=["state", "started_at"])
        run.state = S.RUNNING
        run.started_at = timezone.now()
        run.heartbeat_at = run.started_at
        run.save(update_fields=["state", "started_at", "heartbeat_at"])
        return run


class _Heartbeat(threading.Thread):
    """Beats for a step for as long as it runs, whatever it is doing: the engine's polls beat too, but an
    export or the opening of tasks of a large project writes for minutes without them, and the reaper
    must fail only steps whose worker is gone. Its own database connection, closed when it stops."""

    def __init__(self, run_id: int):
        super().__init__(daemon=True, name=f"heartbeat-{run_id}")
        self.run_id, self.every, self.stopped = run_id, HEARTBEAT_SECONDS, threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.every):
                try:
                    TrainingRun.objects.filter(pk=self.run_id, state=S.RUNNING).update(heartbeat_at=timezone.now())
                except DATABASE_GONE:
                    connection.close()  # a restart: beat again with a new connection next time
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


def run_step(run_id: int) -> str:
    """Run one step (or a standalone run) of the loop."""
    from rlhf.steps import STEPS

    reap_stale_runs()
    run = _claim(run_id)
    if run is None:
        return "skipped"
    heartbeat = _Heartbeat(run.pk)
    heartbeat.start()
    try:
        return _run_claimed(run, STEPS[run.kind])
    finally:
        heartbeat.stop()


def _run_claimed(run: TrainingRun, step) -> str:
    try:
        step(run)
    except Cancelled:
        database_retry(lambda: TrainingRun.objects.filter(pk=run.pk).update(
            state=S.CANCELLED, finished_at=timezone.now(), pid=None), what="recording a cancel")
        return "cancelled"
    except EngineFailed as exc:
        message = str(exc)
        database_retry(lambda: fail_run(run, message), what="recording a failure")
        return "failed"
    except DATABASE_GONE as exc:
        log.exception("step %s of run %s lost the database", run.kind, run.pk)
        message = (f"the database connection was lost during this step ({type(exc).__name__}: {exc}); resume the "
                   "round to run the step again")
        database_retry(lambda: fail_run(run, message), what="recording a failure")
        return "failed"
    except Exception as exc:
        log.exception("step %s of run %s failed", run.kind, run.pk)
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        database_retry(lambda: fail_run(run, message), what="recording a failure")
        return "failed"
    return database_retry(lambda: _succeed(run), what="recording success")


@transaction.atomic
def _succeed(run: TrainingRun) -> str:
    updated = TrainingRun.objects.filter(pk=run.pk, state=S.RUNNING).update(
        state=S.SUCCEEDED, finished_at=timezone.now(), pid=None
    )
    if not updated:  # cancelled at the last moment
        return "cancelled"
    if run.round_id and not TrainingRun.objects.filter(round_id=run.round_id).exclude(state=S.SUCCEEDED).exists():
        TrainingRun.objects.filter(pk=run.round_id).update(state=S.SUCCEEDED, finished_at=timezone.now())
    return "succeeded"
