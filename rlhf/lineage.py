"""Lineage by key: which model version wrote a candidate, which run opened a ranking task, which policy a
side-by-side task judges. The links are rlhf's rows (``GeneratedCandidate``, ``RunTask``) pointing at the
annotation app's, written here in the transaction that opens the tasks; every query of the loop that asks
"whose candidate, whose task" goes through them, never through the ``source``/``origin`` texts (which an
import may set to anything, and which a version's label, were it renamed, would no longer match).
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import F, Max, QuerySet
from django.db.models.functions import Coalesce

from annotation.models import Candidate, PreferencePair, Project, RankingTask
from annotation.services.candidates import open_tasks_from_samples
from rlhf.models import GeneratedCandidate, ModelVersion, RunTask, TrainingRun


def open_linked_tasks(*, run: TrainingRun, samples: list[dict], source: str, priorities: dict[int, float],
                      origin: str, gate_for: ModelVersion | None = None) -> dict:
    """``open_tasks_from_samples`` (samples carrying ``meta["model_version_id"]``, as ``rlhf.steps`` writes
    them), and in the same transaction the links of the new candidates to their versions and of the new
    tasks to ``run`` (and to ``gate_for``, the policy side-by-side tasks judge)."""
    project = run.project
    with transaction.atomic():
        last_candidate = Candidate.objects.aggregate(last=Max("pk"))["last"] or 0
        last_task = RankingTask.objects.aggregate(last=Max("pk"))["last"] or 0
        opened = open_tasks_from_samples(project=project, samples=samples, source=source, priorities=priorities,
                                         origin=origin)
        # The service answers counts, not ids: the new rows are the ones after the ids above with this
        # run's origin (tasks) or a version id in their meta (candidates, including those of prompts that got
        # too few distinct texts for a task).
        tasks = RankingTask.objects.filter(project=project, origin=origin, pk__gt=last_task, rlhf_lineage__isnull=True)
        RunTask.objects.bulk_create(
            [RunTask(task_id=pk, run=run, gate_for=gate_for) for pk in tasks.values_list("pk", flat=True)],
            ignore_conflicts=True,
        )
        prompt_ids = {int(s["prompt_id"]) for s in samples}
        candidates = Candidate.objects.filter(prompt_id__in=prompt_ids, pk__gt=last_candidate,
                                              meta__has_key="model_version_id", rlhf_lineage__isnull=True)
        versions = set(ModelVersion.objects.filter(project=project).values_list("pk", flat=True))
        GeneratedCandidate.objects.bulk_create(
            [GeneratedCandidate(candidate_id=pk, model_version_id=meta["model_version_id"], run=run)
             for pk, meta in candidates.values_list("pk", "meta") if meta.get("model_version_id") in versions],
            ignore_conflicts=True,
        )
    return opened


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
