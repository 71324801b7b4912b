"""The queue wiring end to end: a job enqueued here is run by a real rq worker process
(``manage.py worker --burst``) that joins the same Redis (embedded by default, REDIS_URL in CI)
and the same database."""

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.jobs import expire_leases_job
from annotation.models import Assignment
from annotation.services import queue as q
from lensloop.queue import get_queue, redis_url
from tests import factories as f
from tests.support import manage


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_runs_the_lease_sweep_against_the_same_redis_and_database():
    alice = f.user("alice")
    proj = f.project(lease_minutes=1, annotators=[alice])
    f.task(proj)
    a = q.next_task(annotator=alice, project=proj)
    Assignment.objects.filter(pk=a.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    queue = get_queue("default")
    queue.empty()
    job = queue.enqueue(expire_leases_job, proj.pk)
    done = manage("worker", "default", "--burst", env={"REDIS_URL": redis_url()})
    assert done.returncode == 0, done.stderr
    job.refresh()
    assert job.get_status() == "finished", done.stderr[-2000:]
    assert job.return_value() == 1
    assert Assignment.objects.get(pk=a.pk).state == "expired"
