"""Reviewing rankings: a project admin accepts or rejects what an annotator ranked.

A rejected ranking's preference pairs leave every export (``ExportFilter`` leaves them out by default),
so every later training round trains without them; the files earlier rounds exported are kept as they
were. A review can be changed: a rejected ranking can be accepted again and comes back.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from annotation.exceptions import AnnotationError, NotFound
from annotation.models import Candidate, Membership, Project, Ranking
from annotation.selectors import role_in

# What a reviewer says, and the state it leaves the ranking in.
DECISIONS = {"accept": Ranking.Review.ACCEPTED, "reject": Ranking.Review.REJECTED}
MAX_NOTE = 2000


class InvalidReview(AnnotationError):
    """An unknown decision, or a note that is too long."""

    code = "invalid_review"


class ReviewForbidden(AnnotationError):
    """Only the project's admins review its rankings."""

    status = 403
    code = "permission_denied"


def may_review(user, project: Project) -> bool:
    return role_in(user, project) == Membership.Role.ADMIN


def ranking_review(*, ranking_id: int, project: Project, reviewer, decision: str, note: str = "") -> Ranking:
    """Accept or reject ranking ``ranking_id`` of ``project`` (``decision``: ``accept`` or ``reject``) and
    return it. Re-reviewing is allowed: the last decision counts. Raises ``InvalidReview`` (400) for an
    unknown decision, ``ReviewForbidden`` (403) unless ``reviewer`` is an admin of ``project``,
    ``NotFound`` (404) for a ranking that is not in ``project``; nothing changes then."""
    if decision not in DECISIONS:
        raise InvalidReview(
            f"decision must be one of {sorted(DECISIONS)}, not {decision!r}", fields={"decision": ["Unknown decision."]}
        )
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise InvalidReview(f"the note is over {MAX_NOTE} characters", fields={"note": ["Too long."]})
    if not may_review(reviewer, project):
        raise ReviewForbidden(f"only project admins of {project.slug} may review its rankings")
    with transaction.atomic():
        ranking = Ranking.objects.select_for_update().filter(pk=ranking_id, project=project).first()
        if ranking is None:
            raise NotFound(f"no ranking {ranking_id} in project {project.slug}")
        ranking.review = DECISIONS[decision]
        ranking.reviewed_by = reviewer
        ranking.reviewed_at = timezone.now()
        ranking.review_note = note
        ranking.save(update_fields=["review", "reviewed_by", "reviewed_at", "review_note"])
    return ranking


# How the review list can be ordered: newest first, or least consensus first (the quality job's
# ``Ranking.consensus``: the mean Crowd-BT confidence of the ranking's pairs; rankings it has not scored yet last).
ORDERS = {"newest": "Newest first", "disagreement": "Most disagreement with the consensus first"}


def rankings_for_review(project: Project, *, review: str | None = None, order: str = "newest"):
    """The project's rankings, optionally in one review state, with what a reviewer reads (annotator, prompt
    and image), newest first or (``order="disagreement"``) those that disagree most with the consensus first."""
    qs = Ranking.objects.filter(project=project)
    if review:
        qs = qs.filter(review=review)
    qs = qs.select_related("annotator", "reviewed_by", "task__prompt__image")
    if order == "disagreement":
        return qs.order_by(F("consensus").asc(nulls_last=True), "-created_at", "-id")
    return qs.order_by("-created_at", "-id")


def with_candidates(rankings) -> list[Ranking]:
    """``rankings`` as a list, each with ``ordered_candidates``: its ordering as groups (ties share one)
    of ``{"id", "text"}``, best first. One query for the candidates of them all."""
    rankings = list(rankings)
    wanted = {cid for ranking in rankings for group in ranking.ordering for cid in group}
    texts = dict(Candidate.objects.filter(pk__in=wanted).values_list("id", "text"))
    for ranking in rankings:
        ranking.ordered_candidates = [
            [{"id": cid, "text": texts.get(cid, "")} for cid in group] for group in ranking.ordering
        ]
    return rankings
