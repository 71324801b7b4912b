"""The queue through Django's ORM: what SQLite (and any database other than PostgreSQL) runs.

It makes the same decisions as ``postgres.PostgresQueue``; the contract tests
(``tests/annotation/test_queue_contract.py``) hold both to the same behaviour.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef

from annotation.models import Assignment, Membership, PreferencePair, Project, Ranking, RankingTask
from annotation.pairs import normalise_ordering, pairs_from_groups
from annotation.services.queue.base import (
    FINAL_FOR_ANNOTATOR,
    Queue,
    SubmitResult,
    check_may_submit,
    count_submit,
    lock_task,
    repeat_of,
    settle,
    stale_leases_orm,
)

A = Assignment.State
T = RankingTask.State


def open_tasks_for(project: Project, annotator):
    """Open tasks of ``project`` the annotator has not judged, skipped or taken, best priority first: the
    queue's order (``PostgresQueue``'s lease statement picks in the same order). Unlocked: the page's
    look-ahead reads it too (``annotation.ui_selectors.upcoming_images``)."""
    judged = Assignment.objects.filter(task=OuterRef("pk"), annotator=annotator, state__in=FINAL_FOR_ANNOTATOR)
    return RankingTask.objects.filter(project=project, state=T.OPEN).exclude(Exists(judged)).order_by("-priority", "id")


def _gold_tasks_for(project: Project, annotator):
    """Gold tasks the annotator has not judged, skipped or taken, in the same order."""
    judged = Assignment.objects.filter(task=OuterRef("pk"), annotator=annotator, state__in=FINAL_FOR_ANNOTATOR)
    return RankingTask.objects.filter(project=project, state=T.GOLD).exclude(Exists(judged)).order_by("-priority", "id")


def _open_tasks_for(project: Project, annotator, gold: bool = False):
    """``open_tasks_for`` (or the gold ones), locked with SKIP LOCKED where the database can, for a lease."""
    qs = (_gold_tasks_for if gold else open_tasks_for)(project, annotator).select_related("prompt__image")
    if connection.features.has_select_for_update_skip_locked:
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    return qs


class OrmQueue(Queue):
    name = "orm"

    def _stale_leases(self, project, now, limit):
        return stale_leases_orm(project, now, limit)

    def _lease(self, *, annotator, project: Project, now: datetime, gold: bool = False) -> Assignment | None:
        lease = timedelta(minutes=project.lease_minutes)
        with transaction.atomic():
            own = self.current_assignment(annotator=annotator, project=project, now=now)
            if own is not None:
                own.task.project = project
                return own
            if Membership.objects.filter(project=project, user=annotator, paused_at__isnull=False).exists():
                return None
            # A few rounds at most: a task whose counters say it is full is settled and skipped.
            for _ in range(8):
                task = _open_tasks_for(project, annotator, gold).first()
                if task is None:
                    return None
                if not gold and task.leased_count + task.completed_count >= task.required_annotations:
                    settle(task)
                    task.save(update_fields=["state"])
                    continue
                lease_fields = {"state": A.ACTIVE, "leased_at": now, "expires_at": now + lease, "finished_at": None}
                # Back after an expired or released lease of their own: the row exists, lease it again.
                if Assignment.objects.filter(task=task, annotator=annotator).update(**lease_fields):
                    assignment = Assignment.objects.get(task=task, annotator=annotator)
                else:
                    assignment = Assignment.objects.create(task=task, annotator=annotator, project=project, **lease_fields)
                if not gold:
                    task.leased_count += 1
                    settle(task)
                    task.save(update_fields=["leased_count", "state"])
                assignment.task = task
                task.project = project
                return assignment
        return None

    def _submit(self, annotator, task_id, ordering, client_uuid, flags, rationale, time_spent_ms, now) -> SubmitResult:
        repeat = repeat_of(client_uuid, annotator, task_id)
        if repeat is not None:
            return SubmitResult(repeat, created=False)
        task = lock_task(task_id)
        groups = normalise_ordering(ordering, task.candidate_ids)
        assignment = Assignment.objects.select_for_update().filter(task=task, annotator=annotator).first()
        check_may_submit(task, assignment, now)
        count_submit(task, assignment)
        ranking = Ranking.objects.create(
            task=task,
            project_id=task.project_id,
            annotator=annotator,
            ordering=groups,
            **Ranking.flag_columns(flags),
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
        return SubmitResult(ranking, created=True, gold=task.state == T.GOLD)
