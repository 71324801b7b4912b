"""Quality reports: agreement between annotators and each one's reliability, stored per project.

The figures come from ``annotation.quality`` (numpy) and take seconds to minutes on a large project (24 s for
a million rankings, docs/benchmarks.md), so they are never computed in a request: pages and the API show the
stored ``QualityReport`` and, when rankings came or left since, ask for a recompute in the background
(``enqueue_quality_report``, at most one queued or running job per project).

Rankings rejected in review are left out, as they are out of every export.

The job also writes its per-pair figures back where exports and the review queue read them:
``PreferencePair.confidence`` and ``.agreement``, ``Ranking.consensus`` (``write_back``); pairs and rankings
it did not see (rejected ones) get null.
"""

from __future__ import annotations

import logging
import math
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max
from django.utils import timezone

from annotation.models import PreferencePair, Project, QualityReport, Ranking
from annotation.quality import PreparedRankings, agreement, crowd_bt, prepare

logger = logging.getLogger(__name__)

# Bootstrap resamples of the agreement's 95 % intervals (settings.QUALITY_BOOTSTRAP overrides).
N_BOOT = 500
QUEUE = "default"
# Rows per UPDATE when the figures are written back: one statement per chunk, whatever the project's size.
WRITE_CHUNK = 50_000
# The agreement timeline is per day while the project's first ranking is younger than this, per week after.
DAILY_FOR = timedelta(days=21)


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
      ``agreement_ci`` and ``agreement_n`` (strict comparisons), ``reliability`` (Crowd-BT η) and ``pairs``;
    - ``timeline`` (``timeline_step`` ``"day"`` or ``"week"``): see ``agreement_timeline``.

    Then writes the per-pair confidence and agreement and the per-ranking consensus back (``write_back``).
    """
    seen = {"n": 0, "last": None}
    per_annotator: dict[int, int] = {}
    ranking_ids, created = array("q"), array("d")  # per input ranking: 16 bytes, not an ORM instance

    def rows():
        # One pass over the rankings, in id order, without the ORM's instances or its result cache.
        qs = _kept(project).order_by("id").values_list("id", "task_id", "annotator_id", "ordering", "created_at")
        for pk, task_id, annotator_id, ordering, created_at in qs.iterator(chunk_size=5000):
            seen["n"] += 1
            seen["last"] = pk
            per_annotator[annotator_id] = per_annotator.get(annotator_id, 0) + 1
            ranking_ids.append(pk)
            created.append(created_at.timestamp())
            yield task_id, annotator_id, ordering

    prepared = prepare(rows())
    agree = agreement(prepared, n_boot=_n_boot(), seed=0)
    votes = pair_votes(prepared)
    step, timeline = agreement_timeline(prepared, votes, np.frombuffer(created, dtype=np.float64))
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
        "timeline_step": step,
        "timeline": timeline,
    }
    write_back(project, np.frombuffer(ranking_ids, dtype=np.int64), fit, votes.share)
    report, _ = QualityReport.objects.update_or_create(
        project=project,
        defaults={"computed_at": timezone.now(), "rankings": seen["n"], "last_ranking_id": seen["last"], "data": data},
    )
    return report


@dataclass(frozen=True)
class PairVotes:
    """Per observed pair (in ``PreparedRankings``' pair order, which is ``crowd_bt``'s too): of the votes on
    its candidate pair in its task (one per annotator who ordered the two strictly), ``same`` say what it says
    and ``n`` there are in all; ``share`` = same / n, nan where n = 1 (nobody to agree with)."""

    same: np.ndarray
    n: np.ndarray
    share: np.ndarray


def pair_votes(d: PreparedRankings) -> PairVotes:
    """Count the votes on each candidate pair: items are (task, candidate), so an item pair is one task's."""
    if not len(d.pair_chosen):
        empty = np.zeros(0)
        return PairVotes(empty, empty, empty)
    lo, hi = np.minimum(d.pair_chosen, d.pair_rejected), np.maximum(d.pair_chosen, d.pair_rejected)
    _, group, counts = np.unique(lo * len(d.item_task) + hi, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    plus = d.pair_chosen < d.pair_rejected  # says lo ≻ hi
    n_plus = np.bincount(group, weights=plus, minlength=len(counts))
    n = counts[group].astype(np.float64)
    same = np.where(plus, n_plus[group], n - n_plus[group])
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n >= 2, same / n, np.nan)
    return PairVotes(same=same, n=n, share=share)


def agreement_timeline(d: PreparedRankings, votes: PairVotes, created: np.ndarray) -> tuple[str, list[dict]]:
    """The project's pairwise agreement by when rankings were made, for the dashboard's plot: per UTC day
    while the first ranking is less than ``DAILY_FOR`` old, else per week (from Monday). ``created`` (seconds
    since the epoch) per input ranking.

    A period's figure is the pairwise agreement of its rankings with every other ranking of their tasks,
    whenever that was made: ``agree`` / (``agree`` + ``disagree``) over those strict comparisons, ``n`` of
    them (a comparison of two rankings of the same period counts for both), ``rankings`` made in it. The
    same counts as ``agreement``'s per-annotator figures, summed by period instead of by annotator.
    Returns (``"day"`` or ``"week"``, ``[{"start": ISO date, "pairwise", "n", "rankings"}, ...]``), oldest
    first; periods without rankings are left out."""
    R = len(d.ranking_source)
    if not R:
        return "day", []
    agree_r = np.bincount(d.pair_ranking, weights=votes.same - 1, minlength=R)
    disagree_r = np.bincount(d.pair_ranking, weights=votes.n - votes.same, minlength=R)
    day = np.floor(created[d.ranking_source] / 86400).astype(np.int64)
    now = timezone.now().timestamp() / 86400
    if now - day.min() < DAILY_FOR.days:
        step, start = "day", day
    else:
        step, start = "week", (day + 3) // 7 * 7 - 3  # 1970-01-01 was a Thursday: day −3 a Monday
    periods, which = np.unique(start, return_inverse=True)
    which = which.reshape(-1)
    agree_p = np.bincount(which, weights=agree_r, minlength=len(periods))
    disagree_p = np.bincount(which, weights=disagree_r, minlength=len(periods))
    rankings_p = np.bincount(which, minlength=len(periods))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    out = []
    for k, first_day in enumerate(periods.tolist()):
        n = agree_p[k] + disagree_p[k]
        out.append({
            "start": (epoch + timedelta(days=first_day)).date().isoformat(),
            "pairwise": _num(agree_p[k] / n) if n else None,
            "n": round(n),
            "rankings": int(rankings_p[k]),
        })
    return step, out


def write_back(project: Project, ranking_ids: np.ndarray, fit, share: np.ndarray) -> None:
    """Store the figures where exports filter by them and the review queue sorts by them: per pair its
    ``confidence`` (Crowd-BT's posterior) and ``agreement`` (``PairVotes.share``), matched by (ranking,
    chosen, rejected); per ranking its ``consensus``, the mean confidence of its pairs (null without pairs).
    ``ranking_ids``: the database id of each input ranking of ``fit``.

    Rounded to 4 decimals, and only rows whose value changed are written: a recompute after a few new
    rankings rewrites little. One UPDATE per ``WRITE_CHUNK`` rows (PostgreSQL: joined to ``unnest`` of the
    chunk's arrays; SQLite: ``executemany``), each committed on its own, so that reviews and submits are
    never held behind the whole project's rows. Pairs and rankings of rejected rankings are set to null:
    the fit left them out."""
    R = len(ranking_ids)
    conf = np.round(fit.confidence.astype(np.float64), 4)
    share = np.round(share, 4)
    pair_ranking_ids = ranking_ids[fit.pair_ranking] if len(fit.pair_ranking) else np.zeros(0, dtype=np.int64)
    total = np.bincount(fit.pair_ranking, weights=conf, minlength=R)
    count = np.bincount(fit.pair_ranking, minlength=R)
    with np.errstate(invalid="ignore", divide="ignore"):
        consensus = np.round(np.where(count > 0, total / np.maximum(count, 1), np.nan), 4)

    def nullable(values: np.ndarray) -> list:
        return [None if math.isnan(v) else v for v in values.tolist()]

    pairs, rankings = PreferencePair._meta.db_table, Ranking._meta.db_table
    q = connection.ops.quote_name
    for lo in range(0, len(conf), WRITE_CHUNK):
        part = slice(lo, lo + WRITE_CHUNK)
        columns = (
            pair_ranking_ids[part].tolist(), fit.pair_chosen[part].tolist(), fit.pair_rejected[part].tolist(),
            conf[part].tolist(), nullable(share[part]),
        )
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    f"UPDATE {q(pairs)} AS p SET confidence = v.confidence, agreement = v.agreement "
                    "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::double precision[], "
                    "%s::double precision[]) AS v(ranking_id, chosen_id, rejected_id, confidence, agreement) "
                    "WHERE p.ranking_id = v.ranking_id AND p.chosen_id = v.chosen_id AND p.rejected_id = v.rejected_id "
                    "AND (p.confidence IS DISTINCT FROM v.confidence OR p.agreement IS DISTINCT FROM v.agreement)",
                    columns,
                )
            else:
                cursor.executemany(
                    f"UPDATE {q(pairs)} SET confidence = %s, agreement = %s "
                    "WHERE ranking_id = %s AND chosen_id = %s AND rejected_id = %s "
                    "AND (confidence IS NOT %s OR agreement IS NOT %s)",
                    [(c, a, r, ch, rj, c, a) for r, ch, rj, c, a in zip(*columns, strict=True)],
                )
    for lo in range(0, R, WRITE_CHUNK):
        part = slice(lo, lo + WRITE_CHUNK)
        ids, values = ranking_ids[part].tolist(), nullable(consensus[part])
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    f"UPDATE {q(rankings)} AS r SET consensus = v.consensus "
                    "FROM unnest(%s::bigint[], %s::double precision[]) AS v(id, consensus) "
                    "WHERE r.id = v.id AND r.consensus IS DISTINCT FROM v.consensus",
                    (ids, values),
                )
            else:
                cursor.executemany(
                    f"UPDATE {q(rankings)} SET consensus = %s WHERE id = %s AND consensus IS NOT %s",
                    [(c, pk, c) for pk, c in zip(ids, values, strict=True)],
                )
    rejected = Ranking.objects.filter(project=project, review=Ranking.Review.REJECTED)
    PreferencePair.objects.filter(ranking__in=rejected.values("pk")).exclude(
        confidence__isnull=True, agreement__isnull=True
    ).update(confidence=None, agreement=None)
    rejected.exclude(consensus__isnull=True).update(consensus=None)


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
