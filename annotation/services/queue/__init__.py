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

import functools
import inspect

from django.db import connection

from annotation.services.queue.base import FLAGS, Queue, SubmitResult
from annotation.services.queue.orm import OrmQueue, open_tasks_for

__all__ = [
    "FLAGS", "OrmQueue", "Queue", "SubmitResult", "close_task", "current_assignment", "expire_leases",
    "implementation", "next_task", "open_task", "open_tasks_for", "release_task", "skip_task", "submit_ranking",
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


def _delegate(name: str):
    """The module-level ``name``: the chosen implementation's method, with its signature and docstring."""
    method = getattr(Queue, name)

    @functools.wraps(method)
    def call(**kwargs):
        return getattr(implementation(), name)(**kwargs)

    call.__signature__ = inspect.signature(method).replace(
        parameters=list(inspect.signature(method).parameters.values())[1:]  # without self
    )
    return call


expire_leases = _delegate("expire_leases")
current_assignment = _delegate("current_assignment")
next_task = _delegate("next_task")
submit_ranking = _delegate("submit_ranking")
skip_task = _delegate("skip_task")
release_task = _delegate("release_task")
open_task = _delegate("open_task")
close_task = _delegate("close_task")
