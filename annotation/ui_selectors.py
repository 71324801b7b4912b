"""Reads for the browser pages: what the annotator's page loads ahead (served by the REST API's
``upcoming``, which the page calls) and what the admin dashboard shows.

Read-only, like ``annotation.selectors``; kept apart because they shape data for the pages.
"""

from __future__ import annotations

import operator
import statistics
from collections import Counter
from datetime import datetime, timedelta
from functools import reduce

import markdown
import nh3
from django.db.models import Count, Q
from django.db.models.functions import TruncHour
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from annotation.models import Assignment, Candidate, PreferencePair, Project, Ranking
from annotation.services import queue

A = Assignment.State

# Medians are taken over each annotator's most recent rankings: enough to be stable, never a full scan.
MEDIAN_WINDOW = 1000

_ALLOWED_TAGS = {
    "p", "br", "strong", "em", "b", "i", "code", "pre", "ul", "ol", "li", "blockquote",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "hr", "table", "thead", "tbody", "tr", "th", "td",
}


def instructions_html(project: Project) -> SafeString:
    """The project's Markdown instructions as HTML. Admins write them, but they may paste model output
    or worse, so the HTML is sanitised (no scripts, no event handlers, no javascript: links)."""
    html = markdown.markdown(project.instructions or "", extensions=["tables", "sane_lists"])
    clean = nh3.clean(html, tags=_ALLOWED_TAGS, attributes={"a": {"href", "title"}}, url_schemes={"http", "https", "mailto"})
    return mark_safe(clean)


def upcoming_images(*, annotator, project: Project, exclude_task_id: int | None, n: int = 2) -> list[dict]:
    """The images of the tasks the queue would most likely hand this annotator next, without leasing
    anything, so the browser can download and decode them while the annotator works.

    The queue's own order (``queue.open_tasks_for``). A guess, not a promise: under contention another
    annotator may take them first; the page then simply loads the image it gets.
    """
    qs = queue.open_tasks_for(project, annotator)
    if exclude_task_id is not None:
        qs = qs.exclude(pk=exclude_task_id)
    rows = qs.values_list("pk", "prompt__image_id")[:n]
    return [
        {"task_id": task_id, "image_url": reverse("api-image", args=[project.slug, image_id])}
        for task_id, image_id in rows
    ]


def rankings_per_hour(project: Project, *, hours: int = 48, now: datetime | None = None) -> list[tuple[datetime, int]]:
    """(start of hour, rankings submitted in it) for the last ``hours`` hours, oldest first, zeros kept."""
    now = now or timezone.now()
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    counts = dict(
        Ranking.objects.filter(project=project, created_at__gte=start, created_at__lt=end)
        .annotate(hour=TruncHour("created_at"))
        .values_list("hour")
        .annotate(n=Count("id"))
        .values_list("hour", "n")
    )
    return [(start + timedelta(hours=i), counts.get(start + timedelta(hours=i), 0)) for i in range(hours)]


def annotator_table(project: Project, *, now: datetime | None = None) -> list[dict]:
    """Per annotator: rankings in all and today, skips, flags raised, median time per task (seconds)."""
    now = now or timezone.now()
    start_of_day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = (
        Ranking.objects.filter(project=project)
        .values("annotator_id", "annotator__username")
        .annotate(
            rankings=Count("id"),
            today=Count("id", filter=Q(created_at__gte=start_of_day)),
            flagged=Count("id", filter=reduce(operator.or_, (Q(**{f"flag_{n}": True}) for n in Ranking.FLAGS))),
        )
        .order_by("-rankings", "annotator__username")
    )
    skips = dict(
        Assignment.objects.filter(project=project, state=A.SKIPPED)
        .values_list("annotator_id")
        .annotate(n=Count("id"))
        .values_list("annotator_id", "n")
    )
    table = []
    for row in rows:
        times = list(
            Ranking.objects.filter(project=project, annotator_id=row["annotator_id"], time_spent_ms__isnull=False)
            .order_by("-id")
            .values_list("time_spent_ms", flat=True)[:MEDIAN_WINDOW]
        )
        table.append(
            {
                "user_id": row["annotator_id"],
                "username": row["annotator__username"],
                "rankings": row["rankings"],
                "today": row["today"],
                "flagged": row["flagged"],
                "skipped": skips.get(row["annotator_id"], 0),
                "median_seconds": statistics.median(times) / 1000 if times else None,
            }
        )
    return table


def flag_counts(project: Project) -> dict[str, int]:
    return Ranking.objects.filter(project=project).aggregate(
        **{name: Count("id", filter=Q(**{f"flag_{name}": True})) for name in Ranking.FLAGS}
    )


def candidates_by_source(project: Project) -> list[dict]:
    """Per candidate source (model version, 'human', 'import'): candidates, pairs won and lost against
    other sources, the win rate over those, and the pairs within the source.

    A pair between two candidates of one source is a win and a loss of that source at once: counted in,
    it pulls every win rate towards 50 %, and a source compared only with itself would show exactly that,
    which says nothing. So the win rate counts only pairs against other sources (None when there are none),
    and pairs within a source are counted apart.
    """
    candidates = dict(
        Candidate.objects.filter(prompt__project=project)
        .values_list("source")
        .annotate(n=Count("id"))
        .values_list("source", "n")
    )
    won: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    within: Counter[str] = Counter()
    by_sources = (
        PreferencePair.objects.filter(project=project)
        .values_list("chosen__source", "rejected__source")
        .annotate(n=Count("id"))
        .order_by()
    )
    for chosen, rejected, n in by_sources:  # one row per (winner's, loser's) source
        if chosen == rejected:
            within[chosen] += n
        else:
            won[chosen] += n
            lost[rejected] += n
    rows = []
    for source in sorted(set(candidates) | set(won) | set(lost) | set(within)):
        w, lo = won.get(source, 0), lost.get(source, 0)
        rows.append(
            {
                "source": source,
                "candidates": candidates.get(source, 0),
                "won": w,
                "lost": lo,
                "within": within.get(source, 0),
                "win_rate": w / (w + lo) if w + lo else None,
            }
        )
    return rows


def sources_in(project: Project) -> list[str]:
    return list(
        Candidate.objects.filter(prompt__project=project).order_by("source").values_list("source", flat=True).distinct()
    )
