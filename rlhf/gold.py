"""Gold tasks from the ground truth: where a project's prompts carry ground truth and a verifiable reward can
score answers against it, the reward knows the best-to-worst order of a task's candidates, and that task can be
a gold task without anyone ranking it first (``annotation.services.gold``; docs/loop.md, "Gold tasks from ground
truth").

``mark_gold_from_ground_truth`` takes a stable, hashed share of the project's open tasks (``hashed_unit`` of
``gold:<slug>:<task id>`` below ``fraction``: the same tasks every run, so a second run with the same fraction adds
nothing and a larger fraction extends the set), scores each one's candidates with a reward of the engine's
``REWARDS`` registry, orders them best first with equal scores tied, and marks the task gold through
``task_mark_gold``. Tasks already ranked (even once), without ground truth, or whose candidates all score the
same (no strict pair to test anyone on) are skipped and counted. ``manage.py mark_gold`` is its command.

Who marks: a project admin (``by``), checked as the API checks, or, with ``by=None``, the operator
at the shell, who holds the database anyway. The API and the pages never take that path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from django.db import transaction

from annotation.models import Candidate, Membership, Project, Ranking, RankingTask
from annotation.selectors import role_in
from annotation.services.gold import task_mark_gold
from annotation.splits import hashed_unit
from rlhf.engine.rewards import REWARDS
from rlhf.services import LoopError

T = RankingTask.State
DEFAULT_REWARD = "demo_reward"
CHUNK = 500
PLACES = 9  # scores equal to this many decimals are a tie (float noise never makes a pair)


class MarkGoldError(LoopError):
    """A request that cannot be carried out (unknown reward, fraction outside (0, 1], a user who is not a project
    admin); raised before anything changes."""

    code = "invalid_mark_gold"




@dataclass
class GoldFromTruth:
    """What a run did (or, with ``dry_run``, would do)."""

    reward: str
    fraction: float
    dry_run: bool
    open_tasks: int = 0  # open tasks of the project
    considered: int = 0  # of them, those in the hashed fraction
    marked: int = 0
    skipped_ranked: int = 0  # ranked at least once: left to the annotators
    skipped_no_ground_truth: int = 0
    skipped_ties: int = 0  # every candidate scores the same: no strict pair
    skipped_unscorable: int = 0  # the reward raised on the task's ground truth
    errors: list[str] = field(default_factory=list)  # the first few reasons a task was unscorable
    task_ids: list[int] = field(default_factory=list)  # marked (or, dry, to be marked), in id order

    @property
    def skipped(self) -> int:
        return self.skipped_ranked + self.skipped_no_ground_truth + self.skipped_ties + self.skipped_unscorable

    def as_dict(self) -> dict:
        return {**asdict(self), "skipped": self.skipped}


def in_fraction(project: Project, task_id: int, fraction: float) -> bool:
    """Whether task ``task_id`` is in the project's hashed ``fraction``: the same answer every time, and every
    task of a smaller fraction is in each larger one."""
    return hashed_unit(f"gold:{project.slug}:{task_id}") < fraction


def default_reward(project: Project) -> str:
    """The reward a project judges answers by: its gate's (``gate_reward``), else its rounds' verifiable reward
    (``verifiable_reward`` or a term of the composed ``reward``; the order of ``rlhf.gate.plan``), else
    ``demo_reward``."""
    from rlhf.models import LoopSettings

    row = LoopSettings.objects.filter(project=project).values_list("gate_reward", "round_params").first()
    if row is not None:
        gate_reward, params = row
        from rlhf.engine.round import ground_truth_reward

        return gate_reward or ground_truth_reward(params) or DEFAULT_REWARD
    return DEFAULT_REWARD


def _check(project: Project, fraction, reward: str | None, by) -> str:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or math.isnan(fraction) \
            or not 0 < fraction <= 1:
        raise MarkGoldError(f"fraction must be a number in (0, 1] (more than 0, at most 1), not {fraction!r}")
    name = reward or default_reward(project)
    if name not in REWARDS:
        raise MarkGoldError(f"unknown verifiable reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    if by is not None and role_in(by, project) != Membership.Role.ADMIN:
        raise MarkGoldError(f"{by} is not an admin of project {project.slug}: only project admins mark gold tasks")
    return name


def ordering_by_scores(candidate_ids: list[int], scores: list[float]) -> list[list[int]]:
    """Groups of candidate ids, best first; equal scores (to ``PLACES`` decimals) share a group, in the task's
    order."""
    rounded = [round(float(s), PLACES) for s in scores]
    return [[cid for cid, s in zip(candidate_ids, rounded, strict=True) if s == level]
            for level in sorted(set(rounded), reverse=True)]


def _reference(prompt) -> str | list[str] | None:
    ref = prompt.reference
    if not ref:
        return None
    if isinstance(ref, str):
        return ref
    return ref[0] if len(ref) == 1 else list(ref)


def score_task(task: RankingTask, texts: dict[int, str], reward_fn) -> list[float]:
    """The verifiable reward of each of the task's candidates (in ``candidate_ids`` order) against its prompt's
    ground truth, as the engine calls it (``evaluation``: prompts, completions, ``ground_truth``, ``reference``)."""
    prompt = task.prompt
    gt = prompt.ground_truth or prompt.image.ground_truth
    ids = task.candidate_ids
    kwargs = {"ground_truth": [gt] * len(ids)}
    ref = _reference(prompt)
    if ref is not None:
        kwargs["reference"] = [ref] * len(ids)
    return [float(x) for x in reward_fn([prompt.text] * len(ids), [texts[c] for c in ids], **kwargs)]


def _mark(project: Project, task_id: int, ordering: list[list[int]], user) -> bool:
    """Mark one task, if it is still open and unranked (checked under its lock, so a ranking that arrived since
    the scan wins); its own short transaction."""
    with transaction.atomic():
        task = RankingTask.objects.select_for_update().filter(pk=task_id, project=project).first()
        if task is None or task.state != T.OPEN or task.completed_count or task.rankings.exists():
            return False
        task_mark_gold(project=project, task_id=task_id, user=user, ordering=ordering)
    return True


def mark_gold_from_ground_truth(project: Project, *, fraction: float, reward: str | None = None, by=None,
                                dry_run: bool = False) -> GoldFromTruth:
    """Make the hashed ``fraction`` of ``project``'s open, unranked tasks with ground truth gold tasks, ordered by
    the verifiable ``reward`` (a name in ``REWARDS``; default ``default_reward``). ``by``: the project admin who
    marks them (None: the operator at the shell). ``dry_run`` scores and counts but changes nothing. Bad arguments raise
    ``MarkGoldError`` before anything changes; each task is marked in its own transaction, so an interrupted run
    is finished by running it again."""
    name = _check(project, fraction, reward, by)
    reward_fn = REWARDS[name]
    user = by  # None: the operator at the shell, whom task_mark_gold lets through
    result = GoldFromTruth(reward=name, fraction=float(fraction), dry_run=dry_run)
    open_ids = list(RankingTask.objects.filter(project=project, state=T.OPEN).order_by("pk")
                    .values_list("pk", flat=True).iterator(chunk_size=5000))
    result.open_tasks = len(open_ids)
    chosen = [pk for pk in open_ids if in_fraction(project, pk, fraction)]
    result.considered = len(chosen)
    for start in range(0, len(chosen), CHUNK):
        chunk = chosen[start:start + CHUNK]
        ranked = set(Ranking.objects.filter(task_id__in=chunk).values_list("task_id", flat=True))
        tasks = list(RankingTask.objects.filter(pk__in=chunk).select_related("prompt__image").order_by("pk"))
        texts = dict(Candidate.objects.filter(pk__in=[c for t in tasks for c in t.candidate_ids])
                     .values_list("pk", "text"))
        for task in tasks:
            if task.pk in ranked or task.completed_count or task.state != T.OPEN:
                result.skipped_ranked += 1
                continue
            if not (task.prompt.ground_truth or task.prompt.image.ground_truth):
                result.skipped_no_ground_truth += 1
                continue
            try:
                scores = score_task(task, texts, reward_fn)
            except Exception as exc:  # a reward that cannot read this ground truth: say so, go on
                result.skipped_unscorable += 1
                if len(result.errors) < 5:
                    result.errors.append(f"task {task.pk}: {type(exc).__name__}: {exc}")
                continue
            ordering = ordering_by_scores(task.candidate_ids, scores)
            if len(ordering) < 2:
                result.skipped_ties += 1
                continue
            if dry_run or _mark(project, task.pk, ordering, user):
                result.marked += 1
                result.task_ids.append(task.pk)
            else:
                result.skipped_ranked += 1  # leased and ranked since the scan
    return result
