"""The ranking queue: next task, submit, skip, release, lease expiry.

One interface (``base.Queue``), two implementations: ``orm.OrmQueue`` (Django's ORM; SQLite and any
other database) and ``postgres.PostgresQueue`` (the hot paths as prepared SQL statements). Which one
serves is decided once, by the database vendor, at first use (``implementation()``); the functions
below hand each call to it, so callers write ``queue.next_task(...)`` whatever the database.
``tests/annotation/test_queue_contract.py`` holds both implementations to the same behaviour.

Why this is race-safe:

* Every change to a task's counters (``leased_count``, ``completed_count``) and ``state`` happens in a
  transaction that holds that task's row lock, so the counters are exact and ``state`` always agrees
  with them. Locks are always taken task first, then assignment, so two writers never deadlock.
* PostgreSQL: the queue scan is ``SELECT … FOR UPDATE SKIP LOCKED``; concurrent annotators each lock a
  different open task instead of queueing behind the same one, and the counters are re-checked under
  the lock before a lease is granted.
* SQLite: transactions are IMMEDIATE (see ``lensloop.env.sqlite_database``), so the whole scan-and-lease
  runs under the database write lock; writers are serialised.
* The unique (task, annotator) constraints on Assignment and Ranking, and the unique ``client_uuid``,
  are the last line: a bug above can raise an error but never count an annotator twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import connection

from annotation.models import Assignment, Project, RankingTask
from annotation.services.queue.base import FLAGS, Queue, SubmitResult
from annotation.services.queue.orm import OrmQueue

__all__ = [
    "FLAGS", "OrmQueue", "Queue", "SubmitResult", "close_task", "current_assignment", "expire_leases",
    "implementation", "next_task", "open_task", "release_task", "skip_task", "submit_ranking",
]

_chosen: Queue | None = None


def for_vendor(vendor: str) -> Queue:
    """The implementation for a database vendor (``connection.vendor``)."""
    if vendor == "postgresql":
        from annotation.services.queue.postgres import PostgresQueue

        return PostgresQueue()
    return OrmQueue()


def implementation() -> Queue:
    """The queue this process serves with, chosen by the database vendor the first time it is asked."""
    global _chosen
    if _chosen is None:
        _chosen = for_vendor(connection.vendor)
    return _chosen


def expire_leases(*, project: Project | None = None, now: datetime | None = None, limit: int = 200) -> int:
    return implementation().expire_leases(project=project, now=now, limit=limit)


def current_assignment(*, annotator, project: Project, now: datetime | None = None) -> Assignment | None:
    return implementation().current_assignment(annotator=annotator, project=project, now=now)


def next_task(*, annotator, project: Project, now: datetime | None = None) -> Assignment | None:
    return implementation().next_task(annotator=annotator, project=project, now=now)


def submit_ranking(
    *,
    annotator,
    task_id: int,
    ordering: object,
    client_uuid: uuid.UUID | str,
    flags: frozenset[str] | set[str] | list[str] = frozenset(),
    rationale: str = "",
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> SubmitResult:
    return implementation().submit_ranking(
        annotator=annotator, task_id=task_id, ordering=ordering, client_uuid=client_uuid, flags=flags,
        rationale=rationale, time_spent_ms=time_spent_ms, now=now,
    )


def skip_task(*, annotator, task_id: int, reason: str = "", now: datetime | None = None) -> Assignment:
    return implementation().skip_task(annotator=annotator, task_id=task_id, reason=reason, now=now)


def release_task(*, annotator, task_id: int, now: datetime | None = None) -> Assignment:
    return implementation().release_task(annotator=annotator, task_id=task_id, now=now)


def open_task(
    *, project: Project, prompt_id: int, candidate_ids: list[int], priority: float = 0.0, origin: str = ""
) -> RankingTask:
    return implementation().open_task(
        project=project, prompt_id=prompt_id, candidate_ids=candidate_ids, priority=priority, origin=origin
    )


def close_task(*, task_id: int) -> RankingTask:
    return implementation().close_task(task_id=task_id)


for _name in ("expire_leases", "current_assignment", "next_task", "submit_ranking", "skip_task", "release_task",
              "open_task", "close_task"):
    globals()[_name].__doc__ = getattr(Queue, _name).__doc__
del _name
