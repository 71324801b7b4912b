"""The promotion gate: a round's new policy becomes active only when, on the project's held-out prompts,
it is not worse than the active policy beyond noise (DESIGN.md "Held-out data and promotion").

How it judges (the project's ``LoopSettings.promotion_gate``):

- **verifiable** (``auto`` where the held-out prompts have ground truth and a verifiable reward is named):
  the round's evaluate step answers the same held-out prompts with the new and the active policy and
  scores every answer. The new policy fails when the 95% percentile-bootstrap interval of the paired
  difference new − active lies wholly below zero.
- **human** (``auto`` without ground truth, or ``human``): the reward model on the held-out prompts (the
  same paired difference of its scores; it fails the same way) *and* people. The round's generate step
  opens side-by-side tasks on held-out prompts, each mixing the answers of both policies; once
  ``gate_comparisons`` of them are ranked (or every such task is done) the new policy fails when the 95%
  bootstrap interval of its share of wins lies wholly below one half. A ranking's share is the fraction
  of (new, active) candidate pairs it ranked new above active, ties counting half; rankings, not pairs,
  are resampled, since the pairs of one ranking are not independent.
- **off**: every round's policy becomes active (how rounds behaved before the gate).

A policy that fails is registered, not activated, with the reason on the versions page; a project admin
may still make it active (``rlhf.services.activate_version``). The decisions are pure functions of
figures (``decide_verifiable``, ``decide_reward_model``, ``decide_human``), so that tests can feed them;
``judge_new_policy`` (the round's register step) and ``decide_pending_gates`` (the workers' housekeeping
and the training pages) apply them to versions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.models import Project, Ranking, RankingTask
from lensloop.stats import bootstrap_mean
from rlhf import lineage
from rlhf.engine.round import ground_truth_reward
from rlhf.models import LoopSettings, ModelVersion, TrainingRun

log = logging.getLogger(__name__)
G = ModelVersion.Gate


@dataclass(frozen=True)
class Decision:
    state: str  # a ModelVersion.Gate value
    reason: str
    evidence: dict = field(default_factory=dict)


def loop_settings(project: Project) -> LoopSettings:
    """The project's loop settings, or an unsaved row with the defaults (reading never writes)."""
    return LoopSettings.objects.filter(project=project).first() or LoopSettings(project=project)


def heldout_has_ground_truth(project: Project) -> bool:
    return project.prompts.filter(split="eval").filter(
        Q(ground_truth__isnull=False) | Q(image__ground_truth__isnull=False)
    ).exists()


def plan(project: Project, params: dict) -> dict:
    """How the gate will judge this round's policy: ``{"method", "reward"}``. ``reward`` is the verifiable
    reward the evaluate step scores answers with (also for the over-optimisation monitor), or ""."""
    settings = loop_settings(project)
    reward = settings.gate_reward or ground_truth_reward(params)
    if reward and not heldout_has_ground_truth(project):
        reward = ""  # nothing to score against
    if settings.promotion_gate == LoopSettings.PromotionGate.OFF:
        method = "off"
    elif settings.promotion_gate == LoopSettings.PromotionGate.AUTO and reward:
        method = "verifiable"
    else:
        method = "human"
    return {"method": method, "reward": reward}


# ---- decisions from figures (pure) ----------------------------------------------------------------------


def _interval(figures: dict, name: str) -> tuple[float, float, float, int] | None:
    keys = (f"diff/{name}", f"diff/{name}_low", f"diff/{name}_high", f"diff/{name}_n")
    if any(figures.get(k) is None for k in keys):
        return None
    d, low, high, n = (figures[k] for k in keys)
    if any(isinstance(x, float) and math.isnan(x) for x in (d, low, high)):
        return None
    return d, low, high, int(n)


def decide_verifiable(figures: dict, *, new: str, active: str, reward: str) -> Decision | None:
    """Pass unless the verifiable reward's paired difference new − active is below zero beyond noise."""
    found = _interval(figures, "verifiable")
    if found is None:
        return None
    d, low, high, n = found
    text = (f"{reward} on {n} held-out prompts: {new} {figures.get('policy/verifiable', float('nan')):.3f}, "
            f"{active} {figures.get('baseline/verifiable', float('nan')):.3f}; difference {d:+.3f}, 95% bootstrap "
            f"interval [{low:+.3f}, {high:+.3f}]")
    evidence = {"verifiable": {"diff": d, "low": low, "high": high, "n": n}}
    if high < 0:
        return Decision(G.FAILED, f"worse than {active} beyond noise: {text}", evidence)
    return Decision(G.PASSED, f"not worse than {active} beyond noise: {text}", evidence)


def decide_reward_model(figures: dict, *, new: str, active: str) -> Decision | None:
    """Fail when the reward model scores the new policy's held-out answers below the active one's beyond
    noise; None when it has no objection (or no figures)."""
    found = _interval(figures, "reward_model_score")
    if found is None or found[2] >= 0:
        return None
    d, low, high, n = found
    return Decision(G.FAILED, f"the reward model scores {new}'s answers to {n} held-out prompts below {active}'s "
                    f"beyond noise: difference {d:+.3f}, 95% bootstrap interval [{low:+.3f}, {high:+.3f}]",
                    {"reward_model": {"diff": d, "low": low, "high": high, "n": n}})


def reward_model_note(figures: dict) -> str:
    found = _interval(figures, "reward_model_score")
    if found is None:
        return "no reward-model figures"
    d, low, high, n = found
    return f"reward model on {n} held-out prompts: difference {d:+.3f}, 95% bootstrap interval [{low:+.3f}, {high:+.3f}]"


def decide_human(tally: dict, *, needed: int, new: str, active: str) -> Decision:
    """From the side-by-side rankings so far (``human_tally``): pending until ``needed`` rankings (or no
    task of the comparison is left open), then pass unless the new policy's share of wins is below one
    half beyond noise."""
    n, still_open = tally["rankings"], tally["open_tasks"]
    evidence = {"human": {k: tally[k] for k in ("rankings", "share", "low", "high", "needed") if k in tally}}
    if n < needed and still_open:
        return Decision(G.PENDING, f"waiting for side-by-side rankings of {new} and {active} on held-out prompts: "
                        f"{n} of {needed} so far", evidence)
    if n == 0:
        return Decision(G.FAILED, f"no side-by-side ranking of {new} and {active} was made (no held-out prompt "
                        "to compare them on, or every task closed unranked)", evidence)
    text = (f"{n} side-by-side rankings on held-out prompts: {new} won {tally['share']:.0%} of its comparisons "
            f"with {active}, 95% bootstrap interval [{tally['low']:.0%}, {tally['high']:.0%}]")
    if tally["high"] < 0.5:
        return Decision(G.FAILED, f"people prefer {active} beyond noise: {text}", evidence)
    return Decision(G.PASSED, f"people do not prefer {active} beyond noise: {text}", evidence)


def overoptimisation(figures: dict, human: dict | None = None) -> dict | None:
    """The over-optimisation monitor of one round: the reward model's side (its mean score of the new
    policy's held-out answers, against the version it replaces) beside the held-out truth (the verifiable
    reward, else people's share of wins − ½). ``warning`` when the first rises while the second falls and at
    least one of the two moved beyond noise (two changes that are both noise say nothing: a round whose
    figures barely moved would raise it half the time); ``beyond_noise`` when both intervals exclude zero.
    None without a reward-model figure."""
    rm = _interval(figures, "reward_model_score")
    if rm is None:
        return None
    truth = _interval(figures, "verifiable")
    if truth is not None:
        name = "verifiable reward"
        truth_diff, truth_low, truth_high, truth_n = truth
    elif human and human.get("rankings"):
        name = "people's share of wins − ½"
        truth_diff, truth_low, truth_high = human["share"] - 0.5, human["low"] - 0.5, human["high"] - 0.5
        truth_n = human["rankings"]
    else:
        return {"reward_model": rm, "truth": None, "truth_name": "", "warning": False, "beyond_noise": False}
    diverging = rm[0] > 0 and truth_diff < 0
    warning = diverging and (rm[1] > 0 or truth_high < 0)
    return {"reward_model": rm, "truth": (truth_diff, truth_low, truth_high, truth_n), "truth_name": name,
            "warning": warning, "beyond_noise": warning and rm[1] > 0 and truth_high < 0}


# ---- side-by-side rankings ------------------------------------------------------------------------------


def gate_origin(version: ModelVersion) -> str:
    """The ``origin`` text of the side-by-side tasks that judge ``version`` (what the queue shows; the gate
    finds its tasks by their ``RunTask.gate_for`` link)."""
    return f"gate-{version.pk}"


def ranking_share(ordering: list[list[int]], new_ids: set[int], old_ids: set[int]) -> float | None:
    """Share of (new, old) candidate pairs a ranking put new above old, ties counting half."""
    place = {cid: g for g, group in enumerate(ordering) for cid in group}
    wins, total = 0.0, 0
    for a in new_ids & place.keys():
        for b in old_ids & place.keys():
            total += 1
            wins += 1.0 if place[a] < place[b] else 0.5 if place[a] == place[b] else 0.0
    return wins / total if total else None


def human_tally(version: ModelVersion) -> dict:
    """The side-by-side rankings that judge ``version`` so far: their number, the new policy's mean share of
    wins with its bootstrap interval, and how many of the comparison's tasks are still open."""
    active_id = version.gate.get("active_id")
    tasks = lineage.gate_tasks(version)
    open_tasks = tasks.filter(state__in=[RankingTask.State.OPEN, RankingTask.State.FULL]).count()
    rows = list(Ranking.objects.filter(task__in=tasks).values_list("ordering", "task__candidate_ids"))
    written_by = lineage.versions_of({cid for _, candidate_ids in rows for cid in candidate_ids})
    shares = []
    for ordering, candidate_ids in rows:
        new = {c for c in candidate_ids if written_by.get(c) == version.pk}
        old = {c for c in candidate_ids if active_id is not None and written_by.get(c) == active_id}
        share = ranking_share(ordering, new, old)
        if share is not None:
            shares.append(share)
    b = bootstrap_mean(shares, seed=version.pk or 0)
    return {"rankings": len(shares), "share": b["mean"], "low": b["low"], "high": b["high"], "open_tasks": open_tasks,
            "tasks": tasks.count()}


# ---- applying decisions to versions ---------------------------------------------------------------------


def judge_new_policy(policy: ModelVersion, figures: dict) -> Decision:
    """The gate's first word on a round's new policy, from its held-out evaluation (the register step).
    ``policy.gate`` holds the plan the evaluate step followed (``plan``) and the active policy's label."""
    method, active = policy.gate.get("method", "human"), policy.gate.get("active", "the active policy")
    if method == "off":
        return Decision(G.OFF, "the project's promotion gate is off: every round's policy becomes active")
    if figures.get("heldout") in (None, "none") or not figures.get("prompts"):
        return Decision(G.FAILED, "no held-out prompts to compare it with the active policy on: import rows with "
                        "split: eval (or raise the project's held-out fraction) so rounds can be judged; a project "
                        "admin may still make it active")
    if method == "verifiable":
        decision = decide_verifiable(figures, new=policy.label, active=active, reward=policy.gate.get("reward", ""))
        return decision or Decision(G.FAILED, "the verifiable reward scored no held-out answer (no ground truth?)")
    objection = decide_reward_model(figures, new=policy.label, active=active)
    if objection is not None:
        return objection
    note = reward_model_note(figures)
    return Decision(G.PENDING, f"waiting for side-by-side rankings of {policy.label} and {active} on held-out "
                    f"prompts ({note})", {"reward_model_note": note})


@transaction.atomic
def apply_decision(version: ModelVersion, decision: Decision) -> ModelVersion:
    """Record a decision on ``version`` and make it active when it passed (or the gate is off). A version
    whose gate is no longer pending or undecided (decided meanwhile, superseded) is left alone."""
    from rlhf.services import activate_versions

    locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if locked.gate_state not in (G.NONE, G.PENDING):
        return locked
    locked.gate_state, locked.gate_reason = decision.state, decision.reason
    locked.gate = {**locked.gate, **decision.evidence}
    if decision.state != G.PENDING:
        locked.gate["decided_at"] = timezone.now().isoformat()
    locked.save(update_fields=["gate_state", "gate_reason", "gate"])
    if decision.state in (G.PASSED, G.OFF):
        activate_versions(locked)
        locked.active = True
    log.info("%s: gate %s for %s: %s", locked.project.slug, decision.state, locked.label, decision.reason)
    return locked


def supersede_pending(project: Project, *, keep: ModelVersion | None = None, why: str) -> int:
    """End the pending gates of a project's other policies (a later round's policy was registered, or an
    admin chose a version by hand): a late pass must not replace what is active now."""
    pending = ModelVersion.objects.filter(project=project, gate_state=G.PENDING)
    if keep is not None:
        pending = pending.exclude(pk=keep.pk)
    return pending.update(gate_state=G.SUPERSEDED, gate_reason=why)


def decide_pending_gates(project: Project | None = None) -> list[ModelVersion]:
    """Decide every pending human gate whose side-by-side rankings are in; returns the versions decided.
    A project with a round in progress waits: that round started from the active policy."""
    pending = ModelVersion.objects.filter(gate_state=G.PENDING).select_related("project")
    if project is not None:
        pending = pending.filter(project=project)
    decided = []
    for version in pending:
        if TrainingRun.objects.filter(project=version.project, kind=TrainingRun.Kind.ROUND,
                                      state__in=TrainingRun.ACTIVE_STATES).exists():
            continue
        needed = loop_settings(version.project).gate_comparisons
        tally = human_tally(version)
        decision = decide_human(tally, needed=needed, new=version.label, active=version.gate.get("active", ""))
        decision.evidence["human"]["needed"] = needed
        if decision.state == G.PENDING:
            if decision.reason != version.gate_reason:
                ModelVersion.objects.filter(pk=version.pk, gate_state=G.PENDING).update(gate_reason=decision.reason)
            continue
        reason = f"{decision.reason}; {version.gate.get('reward_model_note', '')}".rstrip("; ")
        decided.append(apply_decision(version, Decision(decision.state, reason, decision.evidence)))
    return decided
