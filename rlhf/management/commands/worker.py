"""Run an rq worker on lensloop's queues (``generate``, ``train``, ``default`` unless told otherwise)."""

import logging
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from lensloop.queue import redis_connection

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run an rq worker on lensloop's queues."

    def add_arguments(self, parser):
        parser.add_argument("queues", nargs="*", help=f"queues to listen on (default: {settings.RQ_QUEUES})")
        parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
        parser.add_argument("--name", default=None, help="worker name (default: host and pid)")

    def handle(self, *args, queues, burst, name, **options):
        if not burst:
            threading.Thread(target=_housekeeping, daemon=True, name="lensloop-housekeeping").start()
        worker = _worker_class()(queues or settings.RQ_QUEUES, connection=redis_connection(), name=name)
        # No rq scheduler: lensloop enqueues nothing for later, and rq forks the scheduler as a separate
        # process that outlives a SIGKILLed worker (it was found orphaned after the kill test).
        worker.work(burst=burst, with_scheduler=False)


def _worker_class():
    """rq's SimpleWorker runs jobs in the worker process itself, not in a forked horse. The heavy work
    already runs in an engine subprocess; running the job in the worker means that killing the worker
    kills the job's heartbeat and (through PR_SET_PDEATHSIG) its engine, so a dead worker is detected
    instead of an orphaned horse training on unseen."""
    from django.db import close_old_connections
    from redis.exceptions import ConnectionError, TimeoutError
    from rq import SimpleWorker

    class LensloopWorker(SimpleWorker):
        def execute_job(self, job, queue):
            close_old_connections()
            try:
                return super().execute_job(job, queue)
            except (ConnectionError, TimeoutError):
                # Redis went away while rq recorded the job's end. rq's loop would quit on it ("unhandled
                # exception"); the step itself is recorded in the database, so carry on: the next dequeue
                # waits for Redis with backoff, and the housekeeping enqueues again a next step whose job
                # Redis lost (rlhf.services.requeue_lost_steps).
                log.exception("Redis unreachable while recording job %s; carrying on", job.id)
                return None
            finally:
                close_old_connections()

    return LensloopWorker


def _housekeeping(interval: float = 20.0) -> None:
    """Every few seconds (and once soon after start, as a worker started after a crash): fail runs whose
    worker died, enqueue again steps whose jobs Redis lost, decide the promotion gates whose side-by-side
    rankings are in, start automatic rounds, return expired leases."""
    from django.db import close_old_connections

    from annotation.jobs import expire_leases_job
    from rlhf.gate import decide_pending_gates
    from rlhf.services import maybe_start_auto_rounds, reap_stale_runs, requeue_lost_steps

    time.sleep(2.0)
    while True:
        try:
            close_old_connections()
            reap_stale_runs()
            requeue_lost_steps()
            decide_pending_gates()
            maybe_start_auto_rounds()
            expire_leases_job()
        except Exception:
            log.exception("housekeeping failed; trying again in %s s", interval)
        time.sleep(interval)
