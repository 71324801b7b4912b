"""The queue's interface and the rules both implementations share.

``Queue`` holds every operation; an implementation supplies the three that differ by database:

* ``_stale_leases``: which leases ran out (ids only);
* ``_lease``: the annotator's own live lease, or a new lease on the best open task (or on a gold task they
  have not ranked, when asked; none at all while they are paused);
* ``_submit``: lock, decide (with ``check_may_submit`` and ``count_submit`` below) and write a ranking.

Everything else (validation, transactions, the idempotent-retry path of a submit, expiry, skip,
release, open, close, when to hand out a gold task) is written once, here.

Gold tasks (``annotation.services.gold``) have state ``gold``: the normal scan never sees them, any number of
annotators may rank one (once each), and their counters are left alone.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.exceptions import AlreadyRanked, InvalidRanking, LeaseLost, NotFound
from annotation.models import Assignment, Candidate, Project, Ranking, RankingTask

A = Assignment.State
T = RankingTask.State

# Assignment states after which the annotator must never be handed the task again.
FINAL_FOR_ANNOTATOR = [A.SUBMITTED, A.SKIPPED, A.ACTIVE]

FLAGS = frozenset(Ranking.FLAGS)


@dataclass(frozen=True)
class SubmitResult:
    ranking: Ranking
    created: bool  # False when this was a repeat of an earlier submit with the same client_uuid
    gold: bool = False  # a ranking of a gold task (the annotator's gold accuracy is then updated)


def settle(task: RankingTask) -> None:
    """Derive ``state`` from the counters. Call with the task locked. Closed and gold tasks keep theirs."""
    if task.state in (T.CLOSED, T.GOLD):
        return
    if task.completed_count >= task.required_annotations:
        task.state = T.DONE
    elif task.leased_count + task.completed_count >= task.required_annotations:
        task.state = T.FULL
    else:
        task.state = T.OPEN


def lock_task(task_id: int) -> RankingTask:
    try:
        return RankingTask.objects.select_for_update().get(pk=task_id)
    except RankingTask.DoesNotExist:
        raise NotFound(f"task {task_id} does not exist") from None


def repeat_of(client_uuid: uuid.UUID, annotator, task_id: int) -> Ranking | None:
    """The ranking an earlier submit with ``client_uuid`` stored, if any; AlreadyRanked if that uuid
    belongs to another annotator's or another task's ranking."""
    ranking = Ranking.objects.filter(client_uuid=client_uuid).first()
    if ranking is None:
        return None
    if ranking.annotator_id != annotator.pk or ranking.task_id != task_id:
        raise AlreadyRanked(f"client_uuid {client_uuid} already belongs to another ranking; send a fresh one")
    return ranking


def count_submit(task: RankingTask, assignment: Assignment) -> None:
    """The task's counters and state after this submit (in memory; the caller writes them): the slot
    moves from leased to completed, or a lapsed lease whose slot was still free becomes completed. A gold
    task's counters are not kept."""
    if task.state == T.GOLD:
        return
    if assignment.state == A.ACTIVE:
        task.leased_count -= 1
    task.completed_count += 1
    settle(task)


def check_may_submit(task: RankingTask, assignment: Assignment | None, now: datetime) -> None:
    if assignment is None:
        raise LeaseLost(f"you have not taken task {task.pk}; take a task from the queue first")
    if assignment.state == A.SUBMITTED:
        raise AlreadyRanked(f"you have already ranked task {task.pk}")
    if task.state == T.CLOSED:
        raise LeaseLost(f"task {task.pk} was closed by a project admin; your ranking was not saved")
    if assignment.state == A.SKIPPED:
        raise LeaseLost(f"you skipped task {task.pk}; it can no longer be ranked by you")
    if assignment.state == A.ACTIVE or task.state == T.GOLD:
        return  # still holds its slot (even if the lease ran out a moment ago); a gold task has no slots
    # Expired or released: accept only if the slot is still free, i.e. nobody took it meanwhile.
    if task.leased_count + task.completed_count >= task.required_annotations:
        raise LeaseLost(
            f"your lease on task {task.pk} ended at {assignment.expires_at:%H:%M:%S} UTC and the task went to "
            "another annotator; your ranking was not saved, take the next task"
        )


def stale_leases_orm(project: Project | None, now: datetime, limit: int) -> list[tuple[int, int]]:
    stale = Assignment.objects.filter(state=A.ACTIVE, expires_at__lte=now)
    if project is not None:
        stale = stale.filter(project=project)
    return list(stale.values_list("id", "task_id")[:limit])


class Queue:
    """The ranking queue: next task, submit, skip, release, lease expiry, open and close."""

    name = "abstract"

    # --- what an implementation supplies -------------------------------------------------------------

    def _stale_leases(self, project: Project | None, now: datetime, limit: int) -> list[tuple[int, int]]:
        """(assignment id, task id) of up to ``limit`` active leases that ran out by ``now``."""
        raise NotImplementedError

    def _lease(self, *, annotator, project: Project, now: datetime, gold: bool = False) -> Assignment | None:
        """The annotator's live lease in ``project``, else a new lease on the best open task they have not
        judged (``gold``: on a gold task they have not judged, best first, and on nothing if none is left), with
        ``task.prompt.image`` loaded; None when there is none or the annotator is paused (their live lease is
        still theirs). Expired leases are already swept."""
        raise NotImplementedError

    def _submit(
        self, annotator, task_id: int, ordering, client_uuid: uuid.UUID, flags, rationale: str,
        time_spent_ms: int | None, now: datetime,
    ) -> SubmitResult:
        """Inside a transaction: lock the task, answer a repeat of a stored submit with its ranking, else
        check (``check_may_submit``), count (``count_submit``) and write the ranking, its pairs, the
        assignment and the task's counters."""
        raise NotImplementedError

    # --- the operations ------------------------------------------------------------------------------

    def expire_leases(self, *, project: Project | None = None, now: datetime | None = None, limit: int = 200) -> int:
        """Return tasks whose leases ran out to the queue. Returns how many leases expired.

        Each lease is expired in its own short transaction, so the sweep never holds many locks and can
        run inside any request that needs a fresh view of the queue.
        """
        now = now or timezone.now()
        expired = 0
        for assignment_id, task_id in self._stale_leases(project, now, limit):
            with transaction.atomic():
                task = RankingTask.objects.select_for_update().filter(pk=task_id).first()
                updated = Assignment.objects.filter(
                    pk=assignment_id, state=A.ACTIVE, expires_at__lte=now
                ).update(state=A.EXPIRED, finished_at=now)
                if not updated or task is None:
                    continue  # submitted, skipped or swept by someone else meanwhile
                expired += 1
                if task.state == T.GOLD:
                    continue
                task.leased_count -= 1
                settle(task)
                task.save(update_fields=["leased_count", "state"])
        return expired

    def current_assignment(self, *, annotator, project: Project, now: datetime | None = None) -> Assignment | None:
        now = now or timezone.now()
        return (
            Assignment.objects.filter(annotator=annotator, project=project, state=A.ACTIVE, expires_at__gt=now)
            .select_related("task__prompt__image")
            .order_by("leased_at")
            .first()
        )

    def next_task(self, *, annotator, project: Project, now: datetime | None = None) -> Assignment | None:
        """The annotator's current lease in ``project``, or a new lease on the best open task; None if the
        queue has nothing for them (or they are paused: ``annotation.services.gold.paused_reason`` says why).

        With probability ``project.gold_rate`` the new lease is on a gold task the annotator has not ranked
        (falling back to the open tasks when none is left), so gold tasks come at random places in each
        annotator's stream."""
        now = now or timezone.now()
        self.expire_leases(project=project, now=now)
        if project.gold_rate > 0 and random.random() < project.gold_rate:
            found = self._lease(annotator=annotator, project=project, now=now, gold=True)
            if found is not None:
                return found
        return self._lease(annotator=annotator, project=project, now=now)

    def submit_ranking(
        self,
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
        try:
            with transaction.atomic():
                result = self._submit(annotator, task_id, ordering, client_uuid, flags, rationale or "", time_spent_ms, now)
        except IntegrityError:
            # A concurrent submit with the same client_uuid won the race: answer with its result.
            repeat = repeat_of(client_uuid, annotator, task_id)
            if repeat is None:
                raise
            return SubmitResult(repeat, created=False)
        if result.created and result.gold:
            from annotation.services.gold import after_gold_ranking

            after_gold_ranking(project_id=result.ranking.project_id, annotator_id=annotator.pk)
        return result

    def skip_task(self, *, annotator, task_id: int, reason: str = "", now: datetime | None = None) -> Assignment:
        """Give the task back for good: this annotator will not be offered it again."""
        return self._end_lease(annotator=annotator, task_id=task_id, state=A.SKIPPED, reason=reason, now=now)

    def release_task(self, *, annotator, task_id: int, now: datetime | None = None) -> Assignment:
        """Give the task back without judging it; it may come back to this annotator later."""
        return self._end_lease(annotator=annotator, task_id=task_id, state=A.RELEASED, reason="", now=now)

    def _end_lease(self, *, annotator, task_id: int, state: str, reason: str, now: datetime | None) -> Assignment:
        now = now or timezone.now()
        with transaction.atomic():
            task = lock_task(task_id)
            assignment = Assignment.objects.select_for_update().filter(task=task, annotator=annotator).first()
            if assignment is None or assignment.state != A.ACTIVE:
                raise LeaseLost(f"you do not hold task {task_id}")
            assignment.state = state
            assignment.finished_at = now
            assignment.skip_reason = reason[:500]
            assignment.save(update_fields=["state", "finished_at", "skip_reason"])
            if task.state != T.GOLD:
                task.leased_count -= 1
                settle(task)
                task.save(update_fields=["leased_count", "state"])
            return assignment

    def open_task(
        self, *, project: Project, prompt_id: int, candidate_ids: list[int], priority: float = 0.0, origin: str = ""
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

    def close_task(self, *, task_id: int) -> RankingTask:
        """Withdraw a task from the queue; active leases end as if expired, rankings already made stay."""
        with transaction.atomic():
            task = lock_task(task_id)
            now = timezone.now()
            Assignment.objects.filter(task=task, state=A.ACTIVE).update(state=A.EXPIRED, finished_at=now)
            task.leased_count = 0
            task.state = T.CLOSED
            task.save(update_fields=["leased_count", "state"])
            return task

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
