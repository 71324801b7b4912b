"""The steps of a round. Each takes its TrainingRun (state: running) and either returns normally
(the job marks it succeeded) or raises (EngineFailed / Cancelled / anything: the job records it).

A round: export snapshot → reward model → policy (PPO, GRPO, DPO or SFT) → evaluate → register the
new versions → generate K candidates per prompt from the active policy → open ranking tasks.

Held-out data (DESIGN.md "Held-out data and promotion"): the export step writes the training records and
prompts (``split: train``) apart from the held-out ones (``split: eval``); no step trains on the latter,
and every step that measures gets them as its held-out file. The evaluate step answers the held-out
prompts with the new and the active policy; the register step lets the promotion gate (``rlhf.gate``)
decide whether the new policy becomes active, and the generate step opens the side-by-side tasks a
human gate waits for.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import datetime
from pathlib import Path

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotation.models import Candidate, Prompt, Ranking, RankingTask
from annotation.services.exports import ExportFilter, write_export, write_prompt_set
from lensloop import storage
from rlhf import gate, lineage
from rlhf.engine.reward_terms import uses_reward_model
from rlhf.engine.round import RoundConfig, round_config
from rlhf.models import ModelVersion, TrainingRun
from rlhf.runner import EngineFailed, run_engine
from rlhf.services import activate_versions, base_policy, next_label

K = TrainingRun.Kind


def _params(run: TrainingRun) -> dict:
    return (run.round.config if run.round_id else run.config) or {}


def _round(run: TrainingRun) -> RoundConfig:
    """The round's parameters (a standalone generate run: its own, the rest defaults)."""
    params = _params(run)
    return round_config({k: v for k, v in params.items() if k in RoundConfig.__dataclass_fields__})


def _sibling(run: TrainingRun, kind: str) -> TrainingRun:
    return TrainingRun.objects.get(round_id=run.round_id, kind=kind)


def _policy_step(run: TrainingRun) -> TrainingRun:
    return TrainingRun.objects.get(round_id=run.round_id, kind__in=TrainingRun.POLICY_KINDS)


def _model_config(version: ModelVersion, cfg: RoundConfig) -> dict:
    """The policy's `model` config: base, the version's adapter to continue, LoRA settings of the round."""
    return cfg.model(version.base_model, _here(version.path))


def _here(path: str) -> str:
    """A version's model folder on this machine (fetched from the object store when another machine made it)."""
    return storage.local_folder(path)


def _save(run: TrainingRun, **fields) -> None:
    for key, value in fields.items():
        setattr(run, key, value)
    TrainingRun.objects.filter(pk=run.pk).update(**fields)


def confidence_weighting(project, cfg: RoundConfig) -> bool:
    """Whether the round's reward model trains on the pairs' confidences: the round's `on`/`off`, or for `auto`
    whether a pair can have a second opinion to be weighed by, i.e. the project ranks each task more than once
    (overlap > 1) or has gold tasks."""
    if cfg.confidence_weighting != "auto":
        return cfg.confidence_weighting == "on"
    return project.overlap > 1 or RankingTask.objects.filter(project=project, gold_ordering__isnull=False).exists()


def _fresh_quality_report(project) -> bool:
    """Recompute the project's quality report (Crowd-BT reliability, the pairs' confidences the export writes)
    here, synchronously, when rankings came or left since it was computed; True when it was recomputed."""
    from annotation.services.quality import quality_report_compute, quality_report_for

    if not quality_report_for(project).stale:
        return False
    quality_report_compute(project=project)
    return True


def step_export(run: TrainingRun) -> None:
    """Freeze the data of this round: preference records up to now (those of training prompts to train on,
    those of held-out prompts to measure on, apart), the train and held-out prompt sets. When the reward model
    weighs pairs by confidence, the quality report is brought up to date first, so the records carry it."""
    project = run.project
    weighting = confidence_weighting(project, _round(run))
    recomputed = _fresh_quality_report(project) if weighting else False
    until = timezone.now()
    out = Path(run.run_dir)
    records = write_export(ExportFilter(project=project, until=until, split="train"), "records", out / "data")
    if records["rows"] == 0:
        raise EngineFailed("no preference pairs to train on yet: rank some tasks of training prompts first "
                           "(the pairs of held-out prompts are never trained on)")
    heldout = write_export(ExportFilter(project=project, until=until, split="eval"), "records", out / "heldout")
    train = write_prompt_set(project, out / "prompts", split="train", name="train.jsonl")
    # The first N held-out prompts by id: every round evaluates on the same set while the project keeps them.
    limit = gate.loop_settings(project).eval_prompts or None
    evalset = write_prompt_set(project, out / "prompts", split="eval", name="eval.jsonl", limit=limit)
    top = _write_top_ranked(project, until, out / "prompts" / "top_ranked.jsonl")
    # The pairs new since the project's last finished round: iterative DPO trains on those (they rank the
    # current policy's own samples), continuing the policy's adapter.
    previous = (TrainingRun.objects.filter(project=project, kind=K.ROUND, state=TrainingRun.State.SUCCEEDED)
                .exclude(pk=run.round_id).order_by("-id").values_list("snapshot", flat=True).first())
    since = datetime.fromisoformat(previous["until"]) if previous and previous.get("until") else None
    new = (write_export(ExportFilter(project=project, since=since, until=until, split="train"), "records", out / "new")
           if since else None)
    # Rejected rankings (review) are left out of the export; the snapshot says how many, so the lineage can.
    before = Ranking.objects.filter(project=project, created_at__lt=until)
    rankings = before.exclude(review=Ranking.Review.REJECTED)
    _save(
        run,
        snapshot={
            "until": until.isoformat(),
            "rankings": rankings.count(),
            "rejected_rankings": before.filter(review=Ranking.Review.REJECTED).count(),
            "last_ranking_id": before.aggregate(m=Max("id"))["m"],
            "pairs": records["rows"],
            "records": str(out / "data" / "preferences.jsonl"),
            "heldout_pairs": heldout["rows"],
            "heldout_records": str(out / "heldout" / "preferences.jsonl") if heldout["rows"] else "",
            "new_records": str(out / "new" / "preferences.jsonl") if new and new["rows"] else "",
            "new_pairs": new["rows"] if new else records["rows"],
            "train_prompts": train["file"],
            "eval_prompts": evalset["file"] if evalset["rows"] else "",
            "heldout_prompts": evalset["rows"],
            "top_ranked": str(top) if top else "",
            "confidence_weighting": weighting,
            "quality_report_recomputed": recomputed,
        },
        step=1,
        total_steps=1,
    )
    if run.round_id:
        TrainingRun.objects.filter(pk=run.round_id).update(snapshot=run.snapshot)


def _write_top_ranked(project, until, path: Path) -> Path | None:
    """Prompt set whose reference is the candidate ranked first (for SFT on top-ranked answers), of the
    training prompts only."""
    best: dict[int, int] = {}
    rankings = Ranking.objects.filter(project=project, created_at__lt=until, flag_all_bad=False, task__prompt__split="train")
    for task_prompt, ordering in rankings.values_list("task__prompt_id", "ordering"):
        best[task_prompt] = ordering[0][0]
    if not best:
        return None
    texts = dict(Candidate.objects.filter(pk__in=best.values()).values_list("pk", "text"))
    prompts = {p.pk: p for p in Prompt.objects.filter(pk__in=best).select_related("image")}
    lines = []
    for prompt_id, candidate_id in best.items():
        prompt = prompts[prompt_id]
        lines.append(
            json.dumps({"prompt_id": prompt_id, "images": ["images/" + Path(prompt.image.file).name],
                        "prompt": prompt.text, "reference": texts[candidate_id], "split": prompt.split})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def step_reward(run: TrainingRun) -> None:
    snapshot = _sibling(run, K.EXPORT).snapshot
    policy = base_policy(run.project)
    # The pairs of held-out prompts: the reward model's accuracy is measured on them, never trained on.
    cfg = _round(run)
    # What the export step resolved (and refreshed the confidences for); a snapshot from before it, resolved now.
    weighting = snapshot.get("confidence_weighting")
    if weighting is None:
        weighting = confidence_weighting(run.project, cfg)
    config = cfg.reward_config(base_model=policy.base_model, train_file=snapshot["records"],
                               eval_file=snapshot.get("heldout_records", ""), seed=run.round_id or run.pk,
                               confidence_weighting=weighting)
    kept = ("rankings", "rejected_rankings", "pairs", "heldout_pairs", "last_ranking_id", "until",
            "confidence_weighting")
    _save(run, config=config, snapshot={k: snapshot[k] for k in kept if k in snapshot})
    result = run_engine(run, "train-reward", config)
    storage.publish_folder(Path(run.run_dir) / "checkpoint")  # before the version exists: others may need it
    version = ModelVersion.objects.create(
        project=run.project,
        kind=ModelVersion.Kind.REWARD,
        label=next_label(run.project, "reward"),
        parent=ModelVersion.objects.filter(project=run.project, kind="reward", active=True).first(),
        base_model=policy.base_model,
        path=str(Path(run.run_dir) / "checkpoint"),
        weights=ModelVersion.Weights.ADAPTER if config["model"]["lora"] else ModelVersion.Weights.FULL,
        metrics=result,
        run=run,
    )
    _save(run, result=result)
    run.input_versions.add(policy)
    return version


def step_policy(run: TrainingRun) -> None:
    cfg = _round(run)
    snapshot = _sibling(run, K.EXPORT).snapshot
    reward = ModelVersion.objects.get(run=_sibling(run, K.REWARD))
    policy = base_policy(run.project)
    if run.kind != cfg.algorithm:
        raise EngineFailed(f"this {run.kind} step belongs to a round whose algorithm is {cfg.algorithm}")
    # use_reward_model=false (PPO/GRPO on a verifiable reward alone, e.g. a benchmark's upper bound): the
    # round's reward model is still trained and registered, but the policy does not learn from it.
    use_rm = run.kind not in (K.PPO, K.GRPO) or uses_reward_model(cfg.policy_terms())
    if run.kind == K.SFT and not snapshot.get("top_ranked"):
        raise EngineFailed("no usable rankings for SFT (all flagged all-bad?)")
    config = cfg.policy_config(
        base_model=policy.base_model, adapter_path=_here(policy.path), seed=run.round_id or run.pk,
        prompts_file=snapshot["train_prompts"], eval_prompts=snapshot.get("eval_prompts", ""),
        # A policy that continues an earlier round's adapter trains DPO on the pairs new since that round; all
        # pairs again each round overfit them (bench/loop.py: held-out accuracy fell round after round).
        records=(snapshot.get("new_records") if policy.path else "") or snapshot["records"],
        heldout_records=snapshot.get("heldout_records", ""), top_ranked=snapshot.get("top_ranked", ""),
        reward_model_path=_here(reward.path),
    )
    _save(run, config=config)
    run.input_versions.add(policy, *([reward] if use_rm else []))
    result = run_engine(run, run.kind, config)
    checkpoint = Path(run.run_dir) / "checkpoint"
    if not (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "config.json").is_file():
        raise EngineFailed(f"{run.kind} finished without a complete checkpoint in {checkpoint}")
    storage.publish_folder(checkpoint)
    ModelVersion.objects.create(
        project=run.project,
        kind=ModelVersion.Kind.POLICY,
        label=next_label(run.project, "policy"),
        parent=policy,
        reward_model=reward if use_rm else None,
        base_model=policy.base_model,
        path=str(checkpoint),
        weights=ModelVersion.Weights.ADAPTER if (checkpoint / "adapter_config.json").is_file() else "full",
        metrics={"train": result},
        run=run,
    )
    _save(run, result=result)


def step_evaluate(run: TrainingRun) -> None:
    """The new policy and the active one answer the same held-out prompts; each answer is scored by the
    gate's verifiable reward (where there is ground truth) and by the round's reward model, with
    intervals and paired differences (engine ``evaluate``); the reward model's accuracy is measured on
    the held-out prompts' pairs. Without held-out prompts it measures on training prompts, and says so."""
    params = _params(run)
    cfg = _round(run)
    project = run.project
    snapshot = _sibling(run, K.EXPORT).snapshot
    new_policy = ModelVersion.objects.get(run=_policy_step(run))
    reward = ModelVersion.objects.get(run=_sibling(run, K.REWARD))
    active = base_policy(project)
    plan = gate.plan(project, params)
    prompts_file, heldout = snapshot.get("eval_prompts") or "", True
    if not prompts_file:
        heldout = False  # the engine then names every figure train/…, and the gate holds the policy back
        limit = gate.loop_settings(project).eval_prompts or 200
        prompts_file = write_prompt_set(project, Path(run.run_dir) / "prompts", split="train", name="train_sample.jsonl",
                                        limit=limit)["file"]
    config = cfg.evaluate_config(
        model=_model_config(new_policy, cfg), prompts_file=prompts_file, heldout=heldout,
        baseline=_model_config(active, cfg) if active.pk != new_policy.pk else None,
        verifiable_reward=plan["reward"], answer_reward_model_path=_here(reward.path),
        reward_model_path=_here(reward.path) if snapshot.get("heldout_records") else "",
        preference_file=snapshot.get("heldout_records", ""),
    )
    _save(run, config=config)
    run.input_versions.add(new_policy, active, reward)
    new_policy.gate = {**plan, "active": active.label, "active_id": active.pk}
    new_policy.save(update_fields=["gate"])
    result = run_engine(run, "evaluate", config)
    new_policy.metrics = {**new_policy.metrics, "eval": result}
    new_policy.save(update_fields=["metrics"])
    _save(run, result=result)


def step_register(run: TrainingRun) -> None:
    """Register the round's versions: the reward model becomes active; the policy becomes active only when
    the promotion gate lets it (``rlhf.gate``) — only now, so a failed policy step leaves the previous
    policy active. A human gate is decided later, once its side-by-side rankings are in."""
    policy = ModelVersion.objects.get(run=_policy_step(run))
    reward = ModelVersion.objects.get(run=_sibling(run, K.REWARD))
    decision = gate.judge_new_policy(policy, policy.metrics.get("eval") or {})
    with transaction.atomic():
        activate_versions(reward)
        gate.supersede_pending(run.project, keep=policy,
                               why=f"a later round registered {policy.label} before this policy's gate was decided")
        policy = gate.apply_decision(policy, decision)
    _save(run, step=1, total_steps=1, result={"policy": policy.label, "reward": reward.label, "gate": policy.gate_state,
                                              "gate_reason": policy.gate_reason, "policy_active": policy.active})


def _generate_prompt_ids(project, n: int, seed: int) -> list[int]:
    """Prompts without an open task, in a seeded random order: mostly train prompts, and the project's held-out
    fraction of held-out ones, so that the rankings of the policy's own samples include held-out ones: the
    next reward model is measured on those (never trained on), not on the rankings it learnt from."""
    busy = RankingTask.objects.filter(project=project, state__in=["open", "full"]).values("prompt_id")
    free = project.prompts.exclude(pk__in=busy)
    rng = random.Random(seed)
    held = list(free.filter(split="eval").values_list("pk", flat=True))
    rng.shuffle(held)
    held = held[:round(n * project.heldout_fraction)]
    train = list(free.filter(split="train").values_list("pk", flat=True))
    rng.shuffle(train)
    return train[:n - len(held)] + held


def uncertainty_priorities(samples: list[dict]) -> dict[int, float]:
    """Priority per prompt in (1, 2]: generated tasks come before imported ones (priority 0), and among
    them the prompts whose candidates the reward model separates least (smallest gap between two
    candidates' rewards) come first — the most informative rankings for the next reward model."""
    by_prompt: dict[int, list[float]] = {}
    for sample in samples:
        by_prompt.setdefault(int(sample["prompt_id"]), [])
        if sample.get("reward") is not None:
            by_prompt[int(sample["prompt_id"])].append(float(sample["reward"]))
    priorities = {}
    for prompt_id, rewards in by_prompt.items():
        rewards.sort()
        gaps = [b - a for a, b in itertools.pairwise(rewards)]
        priorities[prompt_id] = 1.0 + (1.0 / (1.0 + min(gaps)) if gaps else 0.0)
    return priorities


def step_generate(run: TrainingRun) -> None:
    """K candidates per prompt from the active policy — or, for a comparison run, half from each of two
    versions in every task — then open them as ranking tasks. In a round whose policy waits for a human
    gate, also the side-by-side tasks that judge it (``_open_gate_tasks``)."""
    params = _params(run)
    project = run.project
    k = project.candidates_per_task
    out = Path(run.run_dir)
    pending = _pending_gate(run)
    prompt_ids = _generate_prompt_ids(project, _round(run).generate_prompts, seed=run.pk)
    if not prompt_ids and pending is None:
        raise EngineFailed("every train prompt already has an open task; nothing to generate for")
    compare = params.get("compare") or []
    if compare:
        versions = list(ModelVersion.objects.filter(project=project, kind="policy", label__in=compare))
        if len(versions) != 2:
            raise EngineFailed(f"compare names {compare}; need two policy versions of this project")
        shares = [(versions[0], k - k // 2), (versions[1], k // 2)]
    else:
        shares = [(base_policy(project), k)]
    engine_configs: dict = {}
    result: dict = {}
    if prompt_ids:
        samples, results = _sample(run, params, prompt_ids, shares, out, engine_configs, compare=bool(compare))
        opened = lineage.open_linked_tasks(  # one transaction: candidates, tasks and their links
            run=run,
            samples=samples,
            source=shares[0][0].label,
            priorities=uncertainty_priorities(samples),
            origin=f"run-{run.pk}",
        )
        result = {**(results if compare else next(iter(results.values()))), **opened}
    if pending is not None:
        result["gate"] = _open_gate_tasks(run, params, pending, out / "gate", engine_configs)
    _save(run, result=result)


def _sample(run: TrainingRun, params: dict, prompt_ids: list[int], shares: list[tuple[ModelVersion, int]], out: Path,
            engine_configs: dict, *, compare: bool) -> tuple[list[dict], dict]:
    """Samples of every (version, share) for the prompts: K from one version, or for a comparison ``share``
    distinct texts from each. Returns the samples (with ``source``) and the engine results by label."""
    reward = ModelVersion.objects.filter(project=run.project, kind="reward", active=True).first()
    prompt_set = write_prompt_set(run.project, out / "prompts", prompt_ids=prompt_ids, name="prompts.jsonl")
    samples, results = [], {}
    cfg = _round(run)
    for index, (version, share) in enumerate(shares):
        config = cfg.generate_config(
            model=_model_config(version, cfg),
            prompts_file=prompt_set["file"],
            model_version=version.label,
            k=share + (2 if compare else 0),  # spare candidates per prompt: texts both versions wrote are dropped
            seed=run.pk * 10 + index,  # two versions that are still alike must not sample alike
            reward_model_path=_here(reward.path) if reward is not None else "",  # uncertainty priorities
        )
        sub = out / version.label if compare else out
        engine_configs[f"{out.name}/{version.label}" if out != Path(run.run_dir) else version.label] = config
        _save(run, config={**params, "engine": engine_configs})
        run.input_versions.add(version)
        results[version.label] = run_engine(run, "generate", config, run_dir=sub)
        rows = [json.loads(line) for line in (sub / "samples.jsonl").read_text().splitlines() if line.strip()]
        for row in rows:
            row["source"] = version.label
            row["meta"] = {"model_version_id": version.pk}
        samples.extend(_take_per_prompt(rows, share, taken={s["text"] for s in samples}) if compare else rows)
    return samples, results


GATE_PRIORITY = 3.0  # above the generated tasks' (1, 2]: the gate's rankings decide what is sampled next


def _pending_gate(run: TrainingRun) -> ModelVersion | None:
    """The round's new policy when it waits for a human gate."""
    if not run.round_id:
        return None
    return ModelVersion.objects.filter(run__round_id=run.round_id, kind=ModelVersion.Kind.POLICY,
                                       gate_state=ModelVersion.Gate.PENDING).first()


def _open_gate_tasks(run: TrainingRun, params: dict, policy: ModelVersion, out: Path, engine_configs: dict) -> dict:
    """Side-by-side tasks on held-out prompts, each mixing answers of the new policy and the active one,
    enough for the gate's ``gate_comparisons`` rankings: the first held-out prompts by id (the ones the
    evaluate step answered), one task per prompt."""
    project = run.project
    k = project.candidates_per_task
    active = ModelVersion.objects.filter(pk=policy.gate.get("active_id")).first()
    if active is None:
        return {"tasks": 0, "note": "the policy the gate compares with is gone"}
    needed = math.ceil(gate.loop_settings(project).gate_comparisons / project.overlap)
    prompt_ids = list(project.prompts.filter(split="eval").order_by("id").values_list("pk", flat=True)[:needed])
    if not prompt_ids:
        return {"tasks": 0, "note": "the project has no held-out prompts"}
    shares = [(policy, k - k // 2), (active, k // 2)]
    samples, _ = _sample(run, params, prompt_ids, shares, out, engine_configs, compare=True)
    opened = lineage.open_linked_tasks(
        run=run,
        samples=samples,
        source=policy.label,
        priorities=dict.fromkeys(prompt_ids, GATE_PRIORITY),
        origin=gate.gate_origin(policy),
        gate_for=policy,
    )
    return {**opened, "compares": [policy.label, active.label]}


def _take_per_prompt(rows: list[dict], share: int, taken: set[str]) -> list[dict]:
    """At most ``share`` samples per prompt whose text no other version already wrote."""
    out, counts = [], {}
    for row in rows:
        pid = row["prompt_id"]
        if counts.get(pid, 0) < share and row["text"].strip() not in taken:
            out.append(row)
            counts[pid] = counts.get(pid, 0) + 1
    return out


STEPS = {
    K.EXPORT: step_export,
    K.REWARD: step_reward,
    K.PPO: step_policy,
    K.GRPO: step_policy,
    K.DPO: step_policy,
    K.SFT: step_policy,
    K.EVALUATE: step_evaluate,
    K.REGISTER: step_register,
    K.GENERATE: step_generate,
}
