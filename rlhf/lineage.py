"""Lineage by key: which model version wrote a candidate, which run opened a ranking task, which policy a
side-by-side task judges. The links are rlhf's rows (``GeneratedCandidate``, ``RunTask``) pointing at the
annotation app's, written here in the transaction that opens the tasks; every query of the loop that asks
"whose candidate, whose task" goes through them, never through the ``source``/``origin`` texts (which an
import may set to anything, and which a version's label, were it renamed, would no longer match).
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce

from annotation.models import Candidate, PreferencePair, Project, RankingTask
from annotation.services.candidates import open_tasks_from_samples
from rlhf.models import GeneratedCandidate, ModelVersion, RunTask, TrainingRun


def open_linked_tasks(*, run: TrainingRun, samples: list[dict], source: str, priorities: dict[int, float],
                      origin: str, gate_for: ModelVersion | None = None) -> dict:
    """``open_tasks_from_samples`` (samples carrying ``meta["model_version_id"]``, as ``rlhf.steps`` writes
    them), and in the same transaction the links of the new candidates to their versions and of the new
    tasks to ``run`` (and to ``gate_for``, the policy side-by-side tasks judge)."""
    with transaction.atomic():
        opened = open_tasks_from_samples(project=run.project, samples=samples, source=source, priorities=priorities,
                                         origin=origin)
        RunTask.objects.bulk_create([RunTask(task=task, run=run, gate_for=gate_for) for task in opened.tasks])
        GeneratedCandidate.objects.bulk_create(
            [GeneratedCandidate(candidate=c, model_version_id=c.meta["model_version_id"], run=run)
             for c in opened.candidates if c.meta.get("model_version_id") is not None]
        )
    return opened.summary()


def candidates_of(version: ModelVersion) -> QuerySet:
    """The candidates ``version`` generated."""
    return Candidate.objects.filter(rlhf_lineage__model_version=version)


def tasks_opened_by(runs) -> QuerySet:
    """The ranking tasks ``runs`` opened for their own samples (not the side-by-side tasks of a gate)."""
    return RankingTask.objects.filter(rlhf_lineage__run__in=runs, rlhf_lineage__gate_for__isnull=True)


def gate_tasks(version: ModelVersion) -> QuerySet:
    """The side-by-side tasks that judge ``version`` at its promotion gate."""
    return RankingTask.objects.filter(rlhf_lineage__gate_for=version)


def versions_of(candidate_ids) -> dict[int, int]:
    """Candidate id → the id of the model version that generated it (candidates no version wrote are left out)."""
    return dict(GeneratedCandidate.objects.filter(candidate_id__in=list(candidate_ids))
                .values_list("candidate_id", "model_version_id"))


def player_pairs(project: Project, *, split: str | None = None) -> QuerySet:
    """A project's preference pairs with ``chosen_player`` and ``rejected_player``: who wrote each side, as
    the leaderboard and head-to-head counts name them — the current label of the model version that
    generated the candidate, else (an imported or human candidate) its ``source``."""
    pairs = PreferencePair.objects.filter(project=project)
    if split:
        pairs = pairs.filter(prompt__split=split)
    return pairs.annotate(
        chosen_player=Coalesce(F("chosen__rlhf_lineage__model_version__label"), F("chosen__source")),
        rejected_player=Coalesce(F("rejected__rlhf_lineage__model_version__label"), F("rejected__source")),
    )
