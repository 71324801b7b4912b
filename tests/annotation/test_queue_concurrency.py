"""The queue under concurrency: 16 annotator threads, each with its own database connection, loop
"next task → submit" until the queue is empty. On PostgreSQL this exercises SKIP LOCKED, on SQLite
the serialised IMMEDIATE transactions. No task may end up with more rankings than its overlap."""

import threading
import uuid

import pytest
from django.db import connection, connections
from django.db.models import Count

from annotation.exceptions import AnnotationError
from annotation.models import Assignment, PreferencePair, Ranking, RankingTask
from annotation.services import queue
from tests import factories as f

THREADS = 16


def _annotate_until_empty(annotator, project, results, errors, barrier):
    try:
        barrier.wait()
        while True:
            a = queue.next_task(annotator=annotator, project=project)
            if a is None:
                return
            try:
                r = queue.submit_ranking(
                    annotator=annotator,
                    task_id=a.task_id,
                    ordering=[[i] for i in a.task.candidate_ids],
                    client_uuid=uuid.uuid4(),
                )
                results.append(r.ranking.pk)
            except AnnotationError as exc:  # pragma: no cover - would be a bug, reported below
                errors.append(repr(exc))
                return
    except Exception as exc:  # pragma: no cover
        errors.append(repr(exc))
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("overlap", [1, 3])
def test_sixteen_annotators_at_once_never_exceed_the_overlap(overlap):
    people = [f.user(f"annotator{i}") for i in range(THREADS)]
    proj = f.project(overlap=overlap, k=3, annotators=people)
    f.tasks(proj, 40)
    results, errors = [], []
    barrier = threading.Barrier(THREADS)
    threads = [
        threading.Thread(target=_annotate_until_empty, args=(p, proj, results, errors, barrier)) for p in people
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 40 * overlap == Ranking.objects.count()
    per_task = RankingTask.objects.annotate(n=Count("rankings")).values_list("n", flat=True)
    assert set(per_task) == {overlap}
    per_pair = Ranking.objects.values("task", "annotator").annotate(n=Count("id")).filter(n__gt=1)
    assert not per_pair.exists()
    assert set(RankingTask.objects.values_list("state", flat=True)) == {"done"}
    assert not Assignment.objects.filter(state="active").exists()
    assert PreferencePair.objects.count() == 3 * Ranking.objects.count()  # K=3 strict orders: 3 pairs each
    print(f"{connection.vendor}: {len(results)} rankings by {THREADS} threads")
