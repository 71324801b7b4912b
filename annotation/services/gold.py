"""Gold tasks: tasks whose best-to-worst order is known, mixed into every annotator's stream to measure them.

- A project admin marks a task gold with its ordering (``task_mark_gold``), from the import (a manifest row's
  ``gold_ordering``), from an accepted ranking (``task_gold_from_ranking``), or from the ground truth where the
  project has a verifiable reward (``rlhf.gold``, which scores the candidates and calls ``task_mark_gold``).
- A gold task has state ``gold``: the queue's normal scan never sees it; at each new lease the queue hands an
  annotator a gold task they have not ranked with probability ``project.gold_rate`` (``queue.base``). Nothing
  on the page tells it apart. Its counters are not used (every annotator may rank it once).
- Each ranking of a gold task is scored against the gold ordering: of the gold ordering's strict pairs, how many
  the annotator ordered the same way (a tie or the reverse counts as wrong). An annotator's gold accuracy pools
  those pairs, with Wilson's 95 % interval, over the gold tasks they ranked since ``Membership.gold_since``
  (their re-admission, if any).
- After ``project.gold_min_count`` gold tasks, an accuracy below ``project.gold_threshold`` warns the annotator
  (``gold_warned_at``; the dashboard shows it) and, where ``project.gold_pause`` is set, pauses them: the queue
  leases them nothing new (a task they hold can still be submitted: no work is lost) until a project admin
  re-admits them (``annotator_readmit``), which restarts their gold count.
- Gold rankings never become training pairs: the exports leave them out (``exports.ExportFilter``); the gold
  ordering is a test, and every annotator's ranking of it would repeat the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from annotation.exceptions import AnnotationError, NotFound
from annotation.models import Assignment, Membership, Project, Ranking, RankingTask
from annotation.pairs import normalise_ordering, pairs_from_groups
from annotation.selectors import role_in
from lensloop.stats import wilson

T = RankingTask.State


class InvalidGold(AnnotationError):
    """A gold ordering that cannot be one (no strict pair), or a ranking that cannot become gold."""

    code = "invalid_gold"


class Paused(AnnotationError):
    """The annotator is paused in the project and may not take new tasks."""

    status = 403
    code = "paused"


class GoldForbidden(AnnotationError):
    status = 403
    code = "permission_denied"


def _check_admin(user, project: Project) -> None:
    """``user`` must be a project admin; ``None`` is the operator at the shell (``manage.py mark_gold``), who
    may do anything: the API and the pages always pass the request's user."""
    if user is None:
        return
    if role_in(user, project) != Membership.Role.ADMIN:
        raise GoldForbidden(f"only project admins of {project.slug} may manage its gold tasks and annotators")


def gold_groups(ordering: object, candidate_ids: list[int]) -> list[list[int]]:
    """``ordering`` checked against the task's candidates (``InvalidRanking`` names what is wrong) and with at
    least one strict pair, as groups of ids best first."""
    groups = normalise_ordering(ordering, candidate_ids)
    if len(groups) < 2:
        raise InvalidGold("a gold ordering must order at least two candidates strictly; this one ties them all")
    return groups


def task_mark_gold(*, project: Project, task_id: int, user, ordering: object) -> RankingTask:
    """Make task ``task_id`` of ``project`` a gold task with the known ``ordering`` (groups of candidate ids,
    best first; ties allowed). 403 unless ``user`` is a project admin (None: the command line), 404 for a task of another project, 400
    (``InvalidRanking``/``InvalidGold``) for an ordering that is not exactly the task's candidates; nothing
    changes then. A closed task stays closed (its ordering is kept)."""
    _check_admin(user, project)
    with transaction.atomic():
        task = RankingTask.objects.select_for_update().filter(pk=task_id, project=project).first()
        if task is None:
            raise NotFound(f"no task {task_id} in project {project.slug}")
        task.gold_ordering = gold_groups(ordering, task.candidate_ids)
        if task.state != T.CLOSED:
            task.state = T.GOLD
        task.save(update_fields=["gold_ordering", "state"])
    return task


def task_unmark_gold(*, project: Project, task_id: int, user) -> RankingTask:
    """Make a gold task an ordinary one again. Its counters are recounted from its leases and rankings (a gold
    task's were not kept), so it returns to the queue only if it still lacks rankings."""
    _check_admin(user, project)
    with transaction.atomic():
        task = RankingTask.objects.select_for_update().filter(pk=task_id, project=project).first()
        if task is None:
            raise NotFound(f"no task {task_id} in project {project.slug}")
        task.gold_ordering = None
        if task.state == T.GOLD:
            now = timezone.now()
            task.completed_count = min(task.rankings.count(), task.required_annotations)
            active = task.assignments.filter(state=Assignment.State.ACTIVE, expires_at__gt=now).count()
            task.leased_count = min(active, task.required_annotations - task.completed_count)
            task.state = T.OPEN
            from annotation.services.queue.base import settle

            settle(task)
        task.save(update_fields=["gold_ordering", "state", "completed_count", "leased_count"])
    return task


def task_gold_from_ranking(*, project: Project, ranking_id: int, user) -> RankingTask:
    """Promote an accepted ranking to its task's gold ordering (a reviewer checked it)."""
    _check_admin(user, project)
    ranking = Ranking.objects.filter(pk=ranking_id, project=project).first()
    if ranking is None:
        raise NotFound(f"no ranking {ranking_id} in project {project.slug}")
    if ranking.review != Ranking.Review.ACCEPTED:
        raise InvalidGold(f"ranking {ranking_id} is {ranking.review}: accept it in review before it becomes gold")
    return task_mark_gold(project=project, task_id=ranking.task_id, user=user, ordering=ranking.ordering)


# ---------------------------------------------------------------------------------------------- accuracy


def score_against_gold(ordering: list, gold: list) -> tuple[int, int]:
    """(pairs ordered as gold orders them, gold's strict pairs): a tie or the reverse of a gold pair is wrong."""
    position = {cid: i for i, group in enumerate(ordering) for cid in group}
    pairs = pairs_from_groups(gold)
    agree = sum(1 for better, worse, _ in pairs if position.get(better, 0) < position.get(worse, 0))
    return agree, len(pairs)


@dataclass(frozen=True)
class GoldAccuracy:
    tasks: int  # gold tasks ranked
    agree: int
    pairs: int

    @property
    def accuracy(self) -> float | None:
        return self.agree / self.pairs if self.pairs else None

    @property
    def interval(self) -> tuple[float | None, float | None]:
        if not self.pairs:
            return None, None
        return wilson(self.agree, self.pairs)

    def as_dict(self) -> dict:
        low, high = self.interval
        r = lambda x: None if x is None else round(x, 4)  # noqa: E731
        return {"tasks": self.tasks, "agree": self.agree, "pairs": self.pairs, "accuracy": r(self.accuracy),
                "ci": [r(low), r(high)]}


def _gold_rankings(project: Project):
    return Ranking.objects.filter(project=project, task__gold_ordering__isnull=False)


def _pool(rows) -> dict[int, GoldAccuracy]:
    totals: dict[int, list[int]] = {}
    for annotator_id, ordering, gold in rows:
        agree, pairs = score_against_gold(ordering, gold)
        t = totals.setdefault(annotator_id, [0, 0, 0])
        t[0] += 1
        t[1] += agree
        t[2] += pairs
    return {k: GoldAccuracy(*v) for k, v in totals.items()}


def gold_accuracy(project: Project) -> dict[int, GoldAccuracy]:
    """Each annotator's gold accuracy (user id → ``GoldAccuracy``) on the gold tasks ranked since their
    ``gold_since`` (all of them when never re-admitted). Gold rankings are a few per cent of a project's: one
    query, scored in Python."""
    since = dict(Membership.objects.filter(project=project, gold_since__isnull=False).values_list("user_id", "gold_since"))
    rows = (
        (annotator_id, ordering, gold)
        for annotator_id, ordering, gold, created in _gold_rankings(project).values_list(
            "annotator_id", "ordering", "task__gold_ordering", "created_at"
        ).iterator(chunk_size=5000)
        if annotator_id not in since or created >= since[annotator_id]
    )
    return _pool(rows)


def _accuracy_of(project: Project, annotator_id: int, since: datetime | None) -> GoldAccuracy:
    qs = _gold_rankings(project).filter(annotator_id=annotator_id)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    return _pool(qs.values_list("annotator_id", "ordering", "task__gold_ordering")).get(annotator_id, GoldAccuracy(0, 0, 0))


def judge(project: Project, accuracy: GoldAccuracy) -> str:
    """``"unjudged"`` (fewer than ``gold_min_count`` gold tasks), ``"ok"`` or ``"below"`` the threshold."""
    if accuracy.tasks < project.gold_min_count or accuracy.accuracy is None:
        return "unjudged"
    return "below" if accuracy.accuracy < project.gold_threshold else "ok"


def after_gold_ranking(*, project_id: int, annotator_id: int) -> None:
    """Called by the queue after it stored a ranking of a gold task: update the annotator's warning and, where
    the project says so, pause them. Its own short transaction, after the ranking's."""
    project = Project.objects.get(pk=project_id)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(project=project, user_id=annotator_id).first()
        if membership is None:
            return  # a ranking by someone no longer a member: nothing to warn
        accuracy = _accuracy_of(project, annotator_id, membership.gold_since)
        verdict = judge(project, accuracy)
        fields = []
        if verdict == "below":
            now = timezone.now()
            if membership.gold_warned_at is None:
                membership.gold_warned_at = now
                fields.append("gold_warned_at")
            if project.gold_pause and membership.paused_at is None:
                membership.paused_at = now
                membership.paused_reason = (
                    f"gold accuracy {accuracy.accuracy:.2f} on {accuracy.tasks} gold tasks is below the project's "
                    f"{project.gold_threshold:.2f}"
                )[:300]
                fields += ["paused_at", "paused_reason"]
        elif verdict == "ok" and membership.gold_warned_at is not None:
            membership.gold_warned_at = None
            fields.append("gold_warned_at")
        if fields:
            membership.save(update_fields=fields)

def gold_report(project: Project) -> dict:
    """Gold tasks, settings and each member annotator's gold accuracy, warning and pause: what the API's gold
    report answers and the dashboard shows."""
    accuracy = gold_accuracy(project)
    members = Membership.objects.filter(project=project).select_related("user").order_by("user__username")
    annotators = []
    for m in members:
        acc = accuracy.get(m.user_id, GoldAccuracy(0, 0, 0))
        annotators.append({
            "user_id": m.user_id, "username": m.user.username, **acc.as_dict(),
            "verdict": judge(project, acc), "warned": m.gold_warned_at is not None,
            "paused": m.paused_at is not None, "paused_reason": m.paused_reason, "since": m.gold_since,
        })
    return {
        "gold_tasks": RankingTask.objects.filter(project=project, gold_ordering__isnull=False).count(),
        "settings": {name: getattr(project, name) for name in ("gold_rate", "gold_min_count", "gold_threshold",
                                                                 "gold_pause")},
        "annotators": annotators,
    }


def annotator_readmit(*, project: Project, user, annotator_id: int) -> Membership:
    """A project admin lets a paused (or warned) annotator work again; their gold accuracy counts afresh from
    now, so the rankings that paused them do not pause them again at the next gold task."""
    _check_admin(user, project)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(project=project, user_id=annotator_id).first()
        if membership is None:
            raise NotFound(f"user {annotator_id} is not a member of {project.slug}")
        membership.paused_at = None
        membership.paused_reason = ""
        membership.gold_warned_at = None
        membership.gold_since = timezone.now()
        membership.save(update_fields=["paused_at", "paused_reason", "gold_warned_at", "gold_since"])
    return membership


def paused_reason(user, project: Project) -> str | None:
    """Why ``user`` may not take new tasks in ``project``, or None when they may."""
    row = Membership.objects.filter(project=project, user=user, paused_at__isnull=False).values_list(
        "paused_reason", flat=True).first()
    if row is None:
        return None
    return row or "paused by a project admin"
