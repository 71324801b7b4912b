"""Reads of the annotation app: who may do what, queue figures, the task as an annotator sees it."""

from __future__ import annotations

import random

from django.db.models import Count, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from annotation.models import Assignment, Candidate, Membership, PreferencePair, Project, Ranking, RankingTask


def role_in(user, project: Project) -> str | None:
    """'admin', 'annotator' or None. Django superusers are admins of every project."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return Membership.Role.ADMIN
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


def projects_for(user) -> QuerySet[Project]:
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()


def queue_stats(project: Project) -> dict:
    by_state = dict(
        RankingTask.objects.filter(project=project).values_list("state").annotate(n=Count("id")).values_list("state", "n")
    )
    return {
        "tasks": sum(by_state.values()),
        "open": by_state.get(RankingTask.State.OPEN, 0),
        "leased": by_state.get(RankingTask.State.FULL, 0),
        "done": by_state.get(RankingTask.State.DONE, 0),
        "closed": by_state.get(RankingTask.State.CLOSED, 0),
        "rankings": Ranking.objects.filter(project=project).count(),
        "pairs": PreferencePair.objects.filter(project=project).count(),
    }


def annotator_progress(user, project: Project) -> dict:
    start_of_day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    mine = Ranking.objects.filter(project=project, annotator=user).aggregate(
        total=Count("id"), today=Count("id", filter=Q(created_at__gte=start_of_day))
    )
    return {"done_today": mine["today"], "done_total": mine["total"], "open_in_queue": _open_slots(project)}


def _open_slots(project: Project) -> int:
    return RankingTask.objects.filter(project=project, state=RankingTask.State.OPEN).count()


def candidates_for_annotator(task: RankingTask, annotator_id: int) -> list[Candidate]:
    """The task's candidates in an order shuffled per annotator (stable across reloads), so position
    carries no signal; the source model is never part of what the annotator sees. A task fetched by the
    queue's PostgreSQL path brings its candidates along (``prefetched_candidates``)."""
    found = getattr(task, "prefetched_candidates", None)
    if found is None:
        found = Candidate.objects.filter(pk__in=task.candidate_ids)
    by_id = {c.pk: c for c in found}
    ordered = [by_id[cid] for cid in task.candidate_ids if cid in by_id]
    random.Random(f"{task.pk}:{annotator_id}").shuffle(ordered)
    return ordered


def task_payload(assignment: Assignment) -> dict:
    task = assignment.task
    prompt = task.prompt
    return {
        "task_id": task.pk,
        "project": task.project.slug,
        "prompt": prompt.text,
        "image_url": reverse("api-image", args=[task.project.slug, prompt.image_id]),
        "image_width": prompt.image.width,
        "image_height": prompt.image.height,
        "candidates": [{"id": c.pk, "text": c.text} for c in candidates_for_annotator(task, assignment.annotator_id)],
        "expires_at": assignment.expires_at.isoformat(),
        "lease_seconds_left": max(0, int((assignment.expires_at - timezone.now()).total_seconds())),
    }


def image_in_project(project: Project, image_id: int) -> bool:
    return project.prompts.filter(image_id=image_id).exists()



