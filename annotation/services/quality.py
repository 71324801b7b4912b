"""Quality reports: agreement between annotators and each one's reliability, stored per project.

The figures come from ``annotation.quality`` (numpy) and take seconds to minutes on a large project (24 s for
a million rankings, docs/benchmarks.md), so they are never computed in a request: pages and the API show the
stored ``QualityReport`` and, when rankings came or left since, ask for a recompute in the background
(``enqueue_quality_report``, at most one queued or running job per project).

Rankings rejected in review are left out, as they are out of every export.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from annotation.models import Project, QualityReport, Ranking
from annotation.quality import agreement, crowd_bt, prepare

logger = logging.getLogger(__name__)

# Bootstrap resamples of the agreement's 95 % intervals (settings.QUALITY_BOOTSTRAP overrides).
N_BOOT = 500
QUEUE = "default"


def _n_boot() -> int:
    return int(getattr(settings, "QUALITY_BOOTSTRAP", N_BOOT))


def _num(x) -> float | None:
    """A float for JSON: nan (no comparison) becomes None."""
    x = float(x)
    return None if math.isnan(x) else round(x, 4)


def _interval(ci) -> list[float | None]:
    return [_num(ci[0]), _num(ci[1])]


def _kept(project: Project):
    return Ranking.objects.filter(project=project).exclude(review=Ranking.Review.REJECTED)


def quality_report_compute(*, project: Project) -> QualityReport:
    """Compute the project's agreement and Crowd-BT reliability from its rankings (rejected ones left out) and
    store them as its ``QualityReport``. ``data``:

    - ``project``: ``tasks`` (ranked by ≥ 2 annotators), ``pairwise`` agreement with ``pairwise_ci``, ``alpha``
      (ordinal Krippendorff) with ``alpha_ci``, ``agree``, ``disagree``, ``n_boot``;
    - ``annotators``: per user id, ``username``, ``rankings``, ``tasks`` shared with others, ``agreement`` with
      ``agreement_ci`` and ``agreement_n`` (strict comparisons), ``reliability`` (Crowd-BT η) and ``pairs``.
    """
    seen = {"n": 0, "last": None}
    per_annotator: dict[int, int] = {}

    def rows():
        # One pass over the rankings, in id order, without the ORM's instances or its result cache.
        qs = _kept(project).order_by("id").values_list("id", "task_id", "annotator_id", "ordering")
        for pk, task_id, annotator_id, ordering in qs.iterator(chunk_size=5000):
            seen["n"] += 1
            seen["last"] = pk
            per_annotator[annotator_id] = per_annotator.get(annotator_id, 0) + 1
            yield task_id, annotator_id, ordering

    prepared = prepare(rows())
    agree = agreement(prepared, n_boot=_n_boot(), seed=0)
    fit = crowd_bt(prepared)
    del prepared
    reliability = fit.by_annotator()
    pairs = dict(zip(fit.annotators, fit.pairs.tolist(), strict=True))
    from django.contrib.auth import get_user_model

    names = dict(get_user_model().objects.filter(pk__in=per_annotator).values_list("pk", "username"))
    annotators = {}
    for user_id, n in per_annotator.items():
        a = agree.per_annotator.get(user_id)
        annotators[str(user_id)] = {
            "username": names.get(user_id, ""),
            "rankings": n,
            "tasks": a.tasks if a else 0,
            "agreement": _num(a.pairwise) if a else None,
            "agreement_ci": _interval(a.pairwise_ci) if a else [None, None],
            "agreement_n": (a.agree + a.disagree) if a else 0,
            "reliability": _num(reliability[user_id]) if user_id in reliability else None,
            "pairs": int(pairs.get(user_id, 0)),
        }
    data = {
        "project": {
            "tasks": agree.tasks,
            "rankings": agree.rankings,
            "pairwise": _num(agree.pairwise),
            "pairwise_ci": _interval(agree.pairwise_ci),
            "alpha": _num(agree.alpha),
            "alpha_ci": _interval(agree.alpha_ci),
            "agree": agree.agree,
            "disagree": agree.disagree,
            "n_boot": agree.n_boot,
            "crowd_bt_converged": bool(fit.converged),
        },
        "annotators": annotators,
    }
    report, _ = QualityReport.objects.update_or_create(
        project=project,
        defaults={"computed_at": timezone.now(), "rankings": seen["n"], "last_ranking_id": seen["last"], "data": data},
    )
    return report


@dataclass(frozen=True)
class QualityState:
    report: QualityReport | None
    stale: bool  # no report, or rankings came or left (rejected) since it was computed


def quality_report_for(project: Project) -> QualityState:
    """The stored report and whether it is stale: one aggregate query, nothing computed."""
    report = QualityReport.objects.filter(project=project).first()
    if report is None:
        return QualityState(None, True)
    now = _kept(project).aggregate(n=Count("id"), last=Max("id"))
    stale = now["n"] != report.rankings or now["last"] != report.last_ranking_id
    return QualityState(report, stale)


def job_id(project_id: int) -> str:
    return f"quality-{project_id}"


def _enqueue_now(project_id: int) -> None:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    from annotation.jobs import quality_report_job
    from lensloop.queue import get_queue

    queue = get_queue(QUEUE)
    # Two requests at once could both find no job: the first to set this short-lived key enqueues.
    if not queue.connection.set(f"lensloop:{job_id(project_id)}:enqueuing", 1, nx=True, ex=10):
        return
    try:
        status = Job.fetch(job_id(project_id), connection=queue.connection).get_status()
    except NoSuchJobError:
        status = None
    if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        return  # one at a time: the job that is queued or running reads the rankings as they are then
    queue.enqueue(quality_report_job, project_id, job_id=job_id(project_id), job_timeout=3600, result_ttl=3600,
                  failure_ttl=86400)


def enqueue_quality_report(project: Project) -> None:
    """Ask for a recompute in the background, once the current transaction commits; at most one job per project
    is queued or running (rq job id ``quality-<project id>``). With Redis unreachable the request goes on
    (``robust=True``): the report stays stale and the next visit asks again."""
    project_id = project.pk
    transaction.on_commit(lambda: _enqueue_now(project_id), robust=True)
