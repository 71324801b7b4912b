"""Reads for the training pages: runs with their progress, versions with their lineage, head-to-head
counts. Read-only; kept apart from the services because only the pages use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from django.db.models import Count, Prefetch, Q
from django.forms.utils import pretty_name

from annotation.models import Project, RankingTask
from rlhf.charts import FAMILIES, family
from rlhf.engine import round as round_schema
from rlhf.engine.reward_terms import formula, parse_terms
from rlhf.lineage import candidates_of, player_pairs, tasks_opened_by
from rlhf.models import ModelVersion, TrainingRun

K = TrainingRun.Kind
RUNS_SHOWN = 50


def annotate(run: TrainingRun, siblings: list[TrainingRun] | None = None) -> TrainingRun:
    """Attach ``ui_progress`` (0…1), ``ui_percent`` and ``ui_status`` to a run whose steps are prefetched
    (``siblings``: the other steps of its round, for a step that has them at hand)."""
    steps = list(run.steps.all()) if run.kind == K.ROUND else siblings
    run.ui_progress = run.progress
    run.ui_percent = round(100 * run.ui_progress)
    run.ui_status = run.status_text(steps)
    return run


# What people call a round parameter, and what its empty or zero value means: from the round schema.
PARAM_LABELS = {f.name: f.metadata.get("label") or pretty_name(f.name) for f in round_schema.fields()}
PARAM_EMPTY = {f.name: f.metadata["empty"] for f in round_schema.fields() if "empty" in f.metadata}
ALGORITHM_NAMES = {name: text.split(":")[0] for name, text in round_schema.ALGORITHMS.items()}


def readable_value(value) -> str:
    """A parameter's value as people read it: Yes/No, lists comma-separated, 3.0 as 3, nothing as "none"
    (never Python's ``False`` or ``['lm_head']``)."""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(readable_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k} {readable_value(v)}" for k, v in value.items()) if value else "none"
    if value is None or value == "":
        return "none"
    return str(value)


def readable_params(params: dict | None) -> list[tuple[str, str]]:
    """(label, value) per round parameter, labelled as the launch form labels them."""
    out = []
    for key, value in (params or {}).items():
        label = PARAM_LABELS.get(key) or pretty_name(key)
        if key == "algorithm":
            text = ALGORITHM_NAMES.get(value, readable_value(value))
        elif key == "reward" and value:
            text = formula(parse_terms(value))
        elif key in PARAM_EMPTY and not value and not isinstance(value, bool):
            text = PARAM_EMPTY[key]
        else:
            text = readable_value(value)
        out.append((label, text))
    return out


def runs_for(project: Project) -> list[TrainingRun]:
    """Rounds and standalone runs of a project, newest first, with their steps and produced versions."""
    steps = TrainingRun.objects.order_by("position").prefetch_related("versions")
    runs = (
        TrainingRun.objects.filter(project=project, round__isnull=True)
        .select_related("created_by")
        .prefetch_related(Prefetch("steps", queryset=steps), "versions")[:RUNS_SHOWN]
    )
    out = []
    for run in runs:
        annotate(run)
        run.ui_versions = [v for s in run.steps.all() for v in s.versions.all()] + list(run.versions.all())
        out.append(run)
    return out


def run_with_steps(run_id: int) -> TrainingRun:
    steps = TrainingRun.objects.order_by("position").prefetch_related("versions")
    return (
        TrainingRun.objects.select_related("project", "round", "created_by")
        .prefetch_related(Prefetch("steps", queryset=steps), "versions", "input_versions")
        .get(pk=run_id)
    )


def flat_metrics(metrics, prefix: str = "") -> dict[str, float]:
    """Nested metric dicts as ``a/b`` → number (finite numbers only)."""
    out: dict[str, float] = {}
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


HELDOUT_HEADLINE = "eval/policy/verifiable"  # a round's held-out verifiable reward of the new policy


def key_metrics(metrics, limit: int = 4) -> list[tuple[str, float]]:
    """The few metrics worth a column: the held-out verifiable reward, then losses, rewards, KL and
    accuracies. Not the ends of intervals, sample sizes, nor the figures of the version a round compared
    with (the held-out section shows those beside each other)."""
    flat = {k: v for k, v in flat_metrics(metrics).items()
            if not k.endswith(("_low", "_high", "_n")) and "/baseline/" not in k and "/diff/" not in k}
    rank = {fam: i for i, (fam, _) in enumerate(FAMILIES)}
    ordered = sorted(flat.items(), key=lambda kv: (rank.get(family(kv[0]), len(rank)), kv[0].count("/"), kv[0]))
    head = [(HELDOUT_HEADLINE, flat[HELDOUT_HEADLINE])] if HELDOUT_HEADLINE in flat else []
    return (head + [kv for kv in ordered if family(kv[0]) is not None])[:limit]


def versions_for(project: Project) -> list[ModelVersion]:
    return list(
        ModelVersion.objects.filter(project=project)
        .select_related("parent", "reward_model", "run", "run__round")
        .order_by("kind", "-id")
    )


def _generate_runs(version: ModelVersion) -> list[TrainingRun]:
    return list(
        TrainingRun.objects.filter(kind=K.GENERATE, input_versions=version).select_related("round").order_by("id")
    )


def lineage(version: ModelVersion) -> list[dict]:
    """The chain behind (and after) a version, as stages ``{"stage", "text", "run"}``:
    which rankings → which reward model → which policy → which samples."""
    stages: list[dict] = []
    run = version.run
    round_run = run.round if run is not None else None
    reward = version if version.kind == ModelVersion.Kind.REWARD else version.reward_model
    reward_run = reward.run if reward is not None else None
    snapshot = (reward_run.snapshot if reward_run is not None else None) or (round_run.snapshot if round_run else {})
    if snapshot:
        until = snapshot.get("until", "")
        stages.append({
            "stage": "Rankings",
            "text": f"{snapshot.get('rankings', '?')} rankings, {snapshot.get('pairs', '?')} preference pairs"
            + (f" ({snapshot['rejected_rankings']} rejected in review, left out)" if snapshot.get("rejected_rankings") else "")
            + (f", up to {until[:16].replace('T', ' ')} UTC" if until else ""),
            "run": round_run,
        })
    if reward is not None:
        acc = flat_metrics(reward.metrics)
        accuracy = acc.get("eval/accuracy")  # held-out pairs after training (engine.train_reward)
        if accuracy is None:
            accuracy = next((v for k, v in acc.items() if family(k) == "accuracy" and k.startswith("eval/")), None)
        stages.append({
            "stage": "Reward model",
            "text": reward.label + (f", pairwise accuracy {accuracy:.0%}" if accuracy is not None else ""),
            "run": reward_run,
            "label": reward.label,
        })
    if version.kind == ModelVersion.Kind.POLICY:
        if run is not None:
            parent = f" from {version.parent.label}" if version.parent_id else ""
            text = f"{version.label}{parent} by {run.get_kind_display()}"
        else:
            text = f"{version.label}: the project's base model"
        stages.append({"stage": "Policy", "text": text, "run": run, "label": version.label})
        generated = _generate_runs(version)
        candidates = candidates_of(version).count()
        counts = tasks_opened_by(generated).aggregate(all=Count("id"), done=Count("id", filter=Q(state=RankingTask.State.DONE)))
        if generated or candidates:
            text = f"{candidates} candidates"
            if counts["all"]:
                text += f" in {counts['all']} ranking tasks ({counts['done']} fully ranked)"
            stages.append({"stage": "Samples", "text": text, "run": generated[-1] if generated else None})
    else:
        policies = list(version.policies.values_list("label", flat=True))
        if policies:
            stages.append({"stage": "Policies trained against it", "text": ", ".join(policies), "run": None})
    return stages


def head_to_head(project: Project, a: str, b: str, *, split: str | None = None) -> dict:
    """How often annotators ranked a candidate of ``a`` above one of ``b`` (players as the leaderboard names
    them: ``rlhf.lineage.player_pairs``), and the reverse (on the
    prompts of ``split`` only, when given), with Wilson's 95% interval of a's share."""
    from lensloop.stats import wilson

    pairs = player_pairs(project, split=split)
    a_won = pairs.filter(chosen_player=a, rejected_player=b).count()
    b_won = pairs.filter(chosen_player=b, rejected_player=a).count()
    total = a_won + b_won
    low, high = wilson(a_won, total) if total else (None, None)
    return {"a": a, "b": b, "a_won": a_won, "b_won": b_won, "total": total, "a_rate": a_won / total if total else None,
            "a_low": low, "a_high": high}


def expected_preference(rows: Iterable[dict], a: str, b: str) -> float | None:
    """P(a ≻ b) under the fitted Bradley–Terry model: 1 / (1 + 10^((r_b − r_a) / 400)) on Elo-like ratings."""
    ratings = {r["source"]: r["rating"] for r in rows}
    if a not in ratings or b not in ratings:
        return None
    return 1 / (1 + 10 ** ((ratings[b] - ratings[a]) / 400))


# ---- held-out evaluation, the promotion gate and the over-optimisation monitor -------------------------------

HELDOUT_FIGURES = (
    ("verifiable", "Verifiable reward (greedy)"),  # of the greedy answer, what the gate judges
    ("verifiable_sampled", "Verifiable reward, sampled (T = 1)"),  # the answers a round shows annotators
    ("reward_model_score", "Reward-model score"),
)


def interval(figures: dict, name: str) -> dict | None:
    """``{"mean", "low", "high", "n"}`` of a figure the engine's evaluate wrote as name, name_low, name_high,
    name_n (a mean with its 95% bootstrap interval), or None."""
    keys = (name, f"{name}_low", f"{name}_high")
    values = [figures.get(k) for k in keys]
    if any(not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) for v in values):
        return None
    return {"mean": values[0], "low": values[1], "high": values[2], "n": figures.get(f"{name}_n")}


def heldout_round(version: ModelVersion) -> dict | None:
    """A round's held-out evaluation as its pages show it: the new policy and the version it was compared
    with (the active one then) on the same prompts, each figure with its interval and sample size, the
    paired differences, people's side-by-side share, the gate's decision and the over-optimisation monitor.
    None for a version no round evaluated."""
    from rlhf.gate import overoptimisation

    figures = (version.metrics or {}).get("eval") or {}
    if not figures or "prompts" not in figures:
        return None
    heldout = figures.get("heldout") not in (None, "none")
    prefix = "" if heldout else "train/"
    flat = {k[len(prefix):]: v for k, v in figures.items() if k.startswith(prefix)} if prefix else figures
    human = (version.gate or {}).get("human")
    if human and not human.get("rankings"):
        human = None
    rows = []
    for name, what in HELDOUT_FIGURES:
        new, old, diff = interval(flat, f"policy/{name}"), interval(flat, f"baseline/{name}"), interval(flat, f"diff/{name}")
        if new or old or diff:
            rows.append({"name": name, "label": what, "new": new, "active": old, "diff": diff})
    accuracy = flat.get("reward_model/accuracy")
    monitor = overoptimisation(flat, human)
    return {
        "version": version,
        "active": (version.gate or {}).get("active", ""),
        "heldout": heldout,
        "prompts": figures.get("prompts"),
        "prompts_sha": figures.get("prompts_sha", ""),
        "rows": rows,
        "human": human,
        "reward_model_accuracy": None if accuracy is None else {
            "mean": accuracy, "low": flat.get("reward_model/accuracy_low"), "high": flat.get("reward_model/accuracy_high"),
            "n": flat.get("reward_model/pairs")},
        "monitor": monitor,
        "gate_state": version.gate_state,
        "gate_label": version.get_gate_state_display() if version.gate_state else "",
        "gate_reason": version.gate_reason,
    }


VERSION_TABLE_FIGURES = HELDOUT_FIGURES[:2]  # the verifiable rewards: the same truth for every version


def heldout_versions(policies: list[ModelVersion]) -> dict:
    """Every policy's held-out verifiable rewards (greedy, what the gate judges, and sampled, what annotators
    see), compared on one held-out set: the newest round's set (its fingerprint). A version's figures come
    from the round that trained it, or, for one no round trained (the base), from the first round that
    compared a new policy with it. Rows measured on another set are kept but marked, never mixed in silently."""
    rounds = [r for r in (heldout_round(v) for v in sorted(policies, key=lambda v: v.pk)) if r is not None]
    names = [name for name, _ in VERSION_TABLE_FIGURES]
    figures: dict[str, dict] = {}
    for r in rounds:
        for side, label in (("active", r["active"]), ("new", r["version"].label)):
            found = {row["name"]: row[side] for row in r["rows"] if row["name"] in names and row[side]}
            if not label or "verifiable" not in found or (side == "active" and label in figures):
                continue
            figures[label] = {"figures": [found.get(name) for name in names], "sha": r["prompts_sha"],
                              "heldout": r["heldout"]}
    reference = rounds[-1]["prompts_sha"] if rounds else ""
    table = []
    for version in sorted(policies, key=lambda v: v.pk):
        entry = figures.get(version.label)
        if entry is not None:
            table.append({"version": version, **entry, "same_set": entry["sha"] == reference})
    return {"rounds": list(reversed(rounds)), "table": table, "reference": reference,
            "columns": [label for _, label in VERSION_TABLE_FIGURES],
            "prompts": rounds[-1]["prompts"] if rounds else None}
