"""The ranking queue: next task, submit, skip, release, lease expiry.

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

On PostgreSQL the lease, the submit and the expiry scan run as hand-written prepared statements
(``queue_pg``) that make the same decisions as the ORM code here, which SQLite runs; the suite runs
on both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from annotation.exceptions import AlreadyRanked, InvalidRanking, LeaseLost, NotFound
from annotation.models import Assignment, Candidate, PreferencePair, Project, Ranking, RankingTask
from annotation.pairs import normalise_ordering, pairs_from_groups
from annotation.services import queue_pg

A = Assignment.State
T = RankingTask.State

# Assignment states after which the annotator must never be handed the task again.
_FINAL_FOR_ANNOTATOR = [A.SUBMITTED, A.SKIPPED, A.ACTIVE]

FLAGS = frozenset({"all_bad", "unsafe", "image_unclear"})


def _settle(task: RankingTask) -> None:
    """Derive ``state`` from the counters. Call with the task locked."""
    if task.state == T.CLOSED:
        return
    if task.completed_count >= task.required_annotations:
        task.state = T.DONE
    elif task.leased_count + task.completed_count >= task.required_annotations:
        task.state = T.FULL
    else:
        task.state = T.OPEN


def _lock_task(task_id: int) -> RankingTask:
    try:
        return RankingTask.objects.select_for_update().get(pk=task_id)
    except RankingTask.DoesNotExist:
        raise NotFound(f"task {task_id} does not exist") from None


def expire_leases(*, project: Project | None = None, now: datetime | None = None, limit: int = 200) -> int:
    """Return tasks whose leases ran out to the queue. Returns how many leases expired.

    Each lease is expired in its own short transaction, so the sweep never holds many locks and can
    run inside any request that needs a fresh view of the queue.
    """
    now = now or timezone.now()
    if project is not None and _postgres():
        found = queue_pg.expired_leases(project_id=project.pk, now=now, limit=limit)
    else:
        stale = Assignment.objects.filter(state=A.ACTIVE, expires_at__lte=now)
        if project is not None:
            stale = stale.filter(project=project)
        found = stale.values_list("id", "task_id")[:limit]
    expired = 0
    for assignment_id, task_id in found:
        with transaction.atomic():
            task = RankingTask.objects.select_for_update().filter(pk=task_id).first()
            updated = Assignment.objects.filter(
                pk=assignment_id, state=A.ACTIVE, expires_at__lte=now
            ).update(state=A.EXPIRED, finished_at=now)
            if not updated or task is None:
                continue  # submitted, skipped or swept by someone else meanwhile
            task.leased_count -= 1
            _settle(task)
            task.save(update_fields=["leased_count", "state"])
            expired += 1
    return expired


def _postgres() -> bool:
    """PostgreSQL takes the hand-written hot paths of ``queue_pg``; other databases the ORM ones."""
    return connection.vendor == "postgresql"


def _open_tasks_for(project: Project, annotator) -> object:
    judged = Assignment.objects.filter(task=OuterRef("pk"), annotator=annotator, state__in=_FINAL_FOR_ANNOTATOR)
    qs = (
        RankingTask.objects.filter(project=project, state=T.OPEN)
        .exclude(Exists(judged))
        .select_related("prompt__image")
        .order_by("-priority", "id")
    )
    if connection.features.has_select_for_update_skip_locked:
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    return qs


def current_assignment(*, annotator, project: Project, now: datetime | None = None) -> Assignment | None:
    now = now or timezone.now()
    return (
        Assignment.objects.filter(annotator=annotator, project=project, state=A.ACTIVE, expires_at__gt=now)
        .select_related("task__prompt__image")
        .order_by("leased_at")
        .first()
    )


def next_task(*, annotator, project: Project, now: datetime | None = None) -> Assignment | None:
    """The annotator's current lease in ``project``, or a new lease on the best open task; None if the
    queue has nothing for them."""
    now = now or timezone.now()
    expire_leases(project=project, now=now)
    if _postgres():
        return queue_pg.next_task(annotator=annotator, project=project, now=now)
    lease = timedelta(minutes=project.lease_minutes)
    with transaction.atomic():
        own = current_assignment(annotator=annotator, project=project, now=now)
        if own is not None:
            own.task.project = project
            return own
        # A few rounds at most: a task whose counters say it is full is settled and skipped.
        for _ in range(8):
            task = _open_tasks_for(project, annotator).first()
            if task is None:
                return None
            if task.leased_count + task.completed_count >= task.required_annotations:
                _settle(task)
                task.save(update_fields=["state"])
                continue
            lease_fields = {"state": A.ACTIVE, "leased_at": now, "expires_at": now + lease, "finished_at": None}
            # Back after an expired or released lease of their own: the row exists, lease it again.
            if Assignment.objects.filter(task=task, annotator=annotator).update(**lease_fields):
                assignment = Assignment.objects.get(task=task, annotator=annotator)
            else:
                assignment = Assignment.objects.create(task=task, annotator=annotator, project=project, **lease_fields)
            task.leased_count += 1
            _settle(task)
            task.save(update_fields=["leased_count", "state"])
            assignment.task = task
            task.project = project
            return assignment
    return None


@dataclass(frozen=True)
class SubmitResult:
    ranking: Ranking
    created: bool  # False when this was a repeat of an earlier submit with the same client_uuid


def _repeat_of(client_uuid: uuid.UUID, annotator, task_id: int) -> Ranking | None:
    ranking = Ranking.objects.filter(client_uuid=client_uuid).first()
    if ranking is None:
        return None
    if ranking.annotator_id != annotator.pk or ranking.task_id != task_id:
        raise AlreadyRanked(f"client_uuid {client_uuid} already belongs to another ranking; send a fresh one")
    return ranking


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
    """Store a ranking and the pairs it implies, in one transaction. Idempotent on ``client_uuid``.

    Raises InvalidRanking (400) when the ordering is not exactly the task's candidates, LeaseLost (409)
    when the annotator no longer holds the task and its slot went to someone else.
    """
    client_uuid = uuid.UUID(str(client_uuid))
    unknown_flags = set(flags) - FLAGS
    if unknown_flags:
        raise InvalidRanking(f"unknown flags {sorted(unknown_flags)}; allowed: {sorted(FLAGS)}")
    now = now or timezone.now()
    submit = _submit_pg if _postgres() else _submit_orm
    try:
        with transaction.atomic():
            return submit(annotator, task_id, ordering, client_uuid, flags, rationale or "", time_spent_ms, now)
    except IntegrityError:
        # A concurrent submit with the same client_uuid won the race: answer with its result.
        repeat = _repeat_of(client_uuid, annotator, task_id)
        if repeat is None:
            raise
        return SubmitResult(repeat, created=False)


def _submit_orm(annotator, task_id, ordering, client_uuid, flags, rationale, time_spent_ms, now) -> SubmitResult:
    repeat = _repeat_of(client_uuid, annotator, task_id)
    if repeat is not None:
        return SubmitResult(repeat, created=False)
    task = _lock_task(task_id)
    groups = normalise_ordering(ordering, task.candidate_ids)
    assignment = Assignment.objects.select_for_update().filter(task=task, annotator=annotator).first()
    _check_may_submit(task, assignment, client_uuid, now)
    _count_submit(task, assignment)
    ranking = Ranking.objects.create(
        task=task,
        project_id=task.project_id,
        annotator=annotator,
        ordering=groups,
        flag_all_bad="all_bad" in flags,
        flag_unsafe="unsafe" in flags,
        flag_image_unclear="image_unclear" in flags,
        rationale=rationale,
        time_spent_ms=time_spent_ms,
        client_uuid=client_uuid,
    )
    PreferencePair.objects.bulk_create(
        PreferencePair(
            ranking=ranking,
            project_id=task.project_id,
            prompt_id=task.prompt_id,
            chosen_id=chosen,
            rejected_id=rejected,
            margin=margin,
            created_at=ranking.created_at,
        )
        for chosen, rejected, margin in pairs_from_groups(groups)
    )
    assignment.state = A.SUBMITTED
    assignment.finished_at = now
    assignment.save(update_fields=["state", "finished_at"])
    task.save(update_fields=["leased_count", "completed_count", "state"])
    return SubmitResult(ranking, created=True)


def _submit_pg(annotator, task_id, ordering, client_uuid, flags, rationale, time_spent_ms, now) -> SubmitResult:
    """The same decisions as ``_submit_orm`` in two statements: lock and read, then write."""
    locked = queue_pg.lock_for_submit(annotator=annotator, task_id=task_id)
    if locked is None:
        raise NotFound(f"task {task_id} does not exist")
    task, assignment = locked
    if assignment is not None and assignment.state == A.SUBMITTED:
        # Ranked already: a repeat of that submit answers with it (else _check_may_submit refuses).
        repeat = _repeat_of(client_uuid, annotator, task_id)
        if repeat is not None:
            return SubmitResult(repeat, created=False)
    groups = normalise_ordering(ordering, task.candidate_ids)
    _check_may_submit(task, assignment, client_uuid, now)
    _count_submit(task, assignment)
    ranking = queue_pg.write_submit(
        annotator=annotator, task=task, assignment=assignment, groups=groups, pairs=pairs_from_groups(groups),
        flags=flags, rationale=rationale, time_spent_ms=time_spent_ms, client_uuid=client_uuid, now=now,
    )
    return SubmitResult(ranking, created=True)



def _count_submit(task: RankingTask, assignment: Assignment) -> None:
    """The task's counters and state after this submit (in memory; the caller writes them): the slot
    moves from leased to completed, or a lapsed lease whose slot was still free becomes completed."""
    if assignment.state == A.ACTIVE:
        task.leased_count -= 1
    task.completed_count += 1
    _settle(task)


def _check_may_submit(task: RankingTask, assignment: Assignment | None, client_uuid, now: datetime) -> None:
    if assignment is None:
        raise LeaseLost(f"you have not taken task {task.pk}; take a task from the queue first")
    if assignment.state == A.SUBMITTED:
        raise AlreadyRanked(f"you have already ranked task {task.pk}")
    if task.state == T.CLOSED:
        raise LeaseLost(f"task {task.pk} was closed by a project admin; your ranking was not saved")
    if assignment.state == A.SKIPPED:
        raise LeaseLost(f"you skipped task {task.pk}; it can no longer be ranked by you")
    if assignment.state == A.ACTIVE:
        return  # still holds its slot, even if the lease ran out a moment ago and was not swept yet
    # Expired or released: accept only if the slot is still free, i.e. nobody took it meanwhile.
    if task.leased_count + task.completed_count >= task.required_annotations:
        raise LeaseLost(
            f"your lease on task {task.pk} ended at {assignment.expires_at:%H:%M:%S} UTC and the task went to "
            "another annotator; your ranking was not saved, take the next task"
        )


def skip_task(*, annotator, task_id: int, reason: str = "", now: datetime | None = None) -> Assignment:
    """Give the task back for good: this annotator will not be offered it again."""
    return _end_lease(annotator=annotator, task_id=task_id, state=A.SKIPPED, reason=reason, now=now)


def release_task(*, annotator, task_id: int, now: datetime | None = None) -> Assignment:
    """Give the task back without judging it; it may come back to this annotator later."""
    return _end_lease(annotator=annotator, task_id=task_id, state=A.RELEASED, reason="", now=now)


def _end_lease(*, annotator, task_id: int, state: str, reason: str, now: datetime | None) -> Assignment:
    now = now or timezone.now()
    with transaction.atomic():
        task = _lock_task(task_id)
        assignment = Assignment.objects.select_for_update().filter(task=task, annotator=annotator).first()
        if assignment is None or assignment.state != A.ACTIVE:
            raise LeaseLost(f"you do not hold task {task_id}")
        assignment.state = state
        assignment.finished_at = now
        assignment.skip_reason = reason[:500]
        assignment.save(update_fields=["state", "finished_at", "skip_reason"])
        task.leased_count -= 1
        _settle(task)
        task.save(update_fields=["leased_count", "state"])
        return assignment


def open_task(
    *, project: Project, prompt_id: int, candidate_ids: list[int], priority: float = 0.0, origin: str = ""
) -> RankingTask:
    """Open a ranking task over candidates of one prompt."""
    if len(candidate_ids) != project.candidates_per_task:
        raise InvalidRanking(
            f"a task of project {project.slug} needs {project.candidates_per_task} candidates, got {len(candidate_ids)}"
        )
    found = set(Candidate.objects.filter(pk__in=candidate_ids, prompt_id=prompt_id).values_list("pk", flat=True))
    if found != set(candidate_ids) or len(found) != len(candidate_ids):
        raise InvalidRanking(f"candidates {sorted(set(candidate_ids) - found)} are not answers to prompt {prompt_id}")
    return RankingTask.objects.create(
        project=project,
        prompt_id=prompt_id,
        candidate_ids=list(candidate_ids),
        priority=priority,
        required_annotations=project.overlap,
        origin=origin,
    )


def close_task(*, task_id: int) -> RankingTask:
    """Withdraw a task from the queue; active leases end as if expired, rankings already made stay."""
    with transaction.atomic():
        task = _lock_task(task_id)
        now = timezone.now()
        Assignment.objects.filter(task=task, state=A.ACTIVE).update(state=A.EXPIRED, finished_at=now)
        task.leased_count = 0
        task.state = T.CLOSED
        task.save(update_fields=["leased_count", "state"])
        return task
