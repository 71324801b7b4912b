"""Writes of the loop: model versions, runs, rounds, cancel, resume, the stale-run reaper and the
re-enqueuing of steps whose jobs the queue lost."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from annotation.models import PreferencePair, Project
from lensloop.errors import ServiceError
from rlhf.engine import round as round_schema
from rlhf.engine.config_base import ConfigError
from rlhf.models import ModelVersion, TrainingRun

K = TrainingRun.Kind
S = TrainingRun.State
log = logging.getLogger(__name__)

# The round's parameters are defined once, in the engine's RoundConfig (help, labels, bounds); these are
# views of it. ROUND_DEFAULTS: the launch page's fields; ROUND_ADVANCED: the engine settings a project
# keeps in its loop settings (`loop_settings_set`), which rounds launched from the page use too.
ALGORITHMS = tuple(round_schema.ALGORITHMS)
ROUND_DEFAULTS = round_schema.defaults(round_schema.MAIN, round_schema.ALGORITHM, round_schema.MORE)
ROUND_ADVANCED = round_schema.defaults(round_schema.ADVANCED)


class LoopError(ServiceError):
    """Base class of the loop services' errors; the API's exception handler answers them."""


class RoundInProgress(LoopError):
    status = 409
    code = "round_in_progress"


def stale_after() -> timedelta:
    return timedelta(seconds=settings.LENSLOOP_RUN_STALE_SECONDS)


def runs_root() -> Path:
    return Path(settings.DATA_DIR) / "runs"


def _fresh_dir(path: Path) -> Path:
    """A new run's folder. One already there belongs to no run of this database (a database reset with the
    data folder kept): the engine would resume from its checkpoints, so it is moved aside, not reused."""
    if path.exists():
        aside = path.with_name(f"{path.name}.orphan-{timezone.now():%Y%m%dT%H%M%S%f}")
        path.rename(aside)
        log.warning("run folder %s belongs to no run of this database; moved to %s", path, aside)
    return path


def base_policy(project: Project) -> ModelVersion:
    """The active policy, creating the base policy version (the project's base model) on first use."""
    active = ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY, active=True).first()
    if active is not None:
        return active
    with transaction.atomic():
        version, _ = ModelVersion.objects.get_or_create(
            project=project,
            label="base",
            defaults={
                "kind": ModelVersion.Kind.POLICY,
                "base_model": project.base_model or "demo",
                "path": "",
                "weights": ModelVersion.Weights.FULL,
                "active": not ModelVersion.objects.filter(project=project, kind="policy", active=True).exists(),
            },
        )
    return ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY, active=True).first() or version


def active_reward(project: Project) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.REWARD, active=True).first()


def next_label(project: Project, kind: str) -> str:
    n = ModelVersion.objects.filter(project=project, kind=kind).exclude(label="base").count() + 1
    while ModelVersion.objects.filter(project=project, label=f"{kind}-v{n}").exists():
        n += 1
    return f"{kind}-v{n}"


def validate_round_params(params: dict, *, base_model: str | None = None) -> dict:
    """Every parameter of a round (defaults filled in), checked against the round schema
    (``rlhf.engine.round``); with ``base_model``, also every engine config the round's steps will run
    with. LoopError names the field."""
    try:
        cfg = round_schema.round_config(params)
        if base_model is not None:
            cfg.check_engine_configs(base_model)
    except ConfigError as exc:
        raise LoopError(str(exc)) from None
    if cfg.qlora:
        from rlhf.hardware import cuda_available

        if not cuda_available():
            raise LoopError("QLoRA needs a CUDA GPU on the training workers; none is configured here")
    return round_schema.to_params(cfg)


def check_reward(project: Project, params: dict) -> None:
    """Dry-run a round's composed reward (``params["reward"]``) before anything is queued: an engine process
    (``python -m rlhf.engine check-reward``; the web tier never imports a user's reward function) calls every
    term but the reward model once on one of the project's prompts and its first candidate, and says whether
    each imports, runs and returns one number per answer. LoopError names the term."""
    import json
    import subprocess
    import sys

    from rlhf.engine.reward_terms import REWARD_MODEL

    terms = params.get("reward") or []
    if all(t.get("reward") == REWARD_MODEL for t in terms):
        return
    cmd = [sys.executable, "-m", "rlhf.engine", "check-reward"]
    try:
        proc = subprocess.run(cmd, input=json.dumps({"reward": terms, "sample": reward_sample(project)}),
                              capture_output=True, text=True, timeout=settings.LENSLOOP_REWARD_CHECK_TIMEOUT,
                              cwd=settings.BASE_DIR, env={**os.environ, "LENSLOOP_DATA_DIR": str(settings.DATA_DIR)})
    except subprocess.TimeoutExpired:
        raise LoopError(f"the reward check took longer than {settings.LENSLOOP_REWARD_CHECK_TIMEOUT} s: a term of "
                        "`reward` hangs on one sample (or imports something slow)") from None
    if proc.returncode == 2:
        raise LoopError(proc.stderr.strip().splitlines()[-1].removeprefix("config error: "))
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise LoopError(f"the reward check failed (exit {proc.returncode}): {tail}")


def reward_sample(project: Project) -> dict:
    """One of the project's training prompts and its first candidate, as the reward check's sample (a
    stand-in answer where the prompt has no candidate yet)."""
    from annotation.images import media_path
    from annotation.models import Candidate, Prompt
    from rlhf.engine.reward_terms import dry_run_sample

    prompt = (Prompt.objects.filter(project=project).select_related("image")
              .order_by(models.Case(models.When(split=Prompt.Split.TRAIN, then=0), default=1), "id").first())
    if prompt is None:
        return dry_run_sample({})
    candidate = Candidate.objects.filter(prompt=prompt).order_by("id").values_list("text", flat=True).first()
    reference = prompt.reference or None
    return dry_run_sample({
        "prompt": prompt.text, "images": [str(media_path(prompt.image.file))],
        "ground_truth": prompt.ground_truth if prompt.ground_truth is not None else prompt.image.ground_truth,
        "reference": reference[0] if reference and len(reference) == 1 else reference,
    }, candidate)


def advanced_params(params: dict | None) -> dict:
    """The ROUND_ADVANCED entries of `params` (a project's saved round parameters)."""
    return {k: v for k, v in (params or {}).items() if k in ROUND_ADVANCED}


def saved_round_params(project: Project) -> dict:
    """The round parameters a project keeps in its loop settings ({} when it has none)."""
    from rlhf.models import LoopSettings

    return LoopSettings.objects.filter(project=project).values_list("round_params", flat=True).first() or {}


ROUND_STEPS = {
    "ppo": [K.EXPORT, K.REWARD, K.PPO, K.EVALUATE, K.REGISTER, K.GENERATE],
    "grpo": [K.EXPORT, K.REWARD, K.GRPO, K.EVALUATE, K.REGISTER, K.GENERATE],
    "dpo": [K.EXPORT, K.REWARD, K.DPO, K.EVALUATE, K.REGISTER, K.GENERATE],
    "sft": [K.EXPORT, K.REWARD, K.SFT, K.EVALUATE, K.REGISTER, K.GENERATE],
}


def start_round(*, project: Project, user=None, params: dict | None = None, enqueue: bool = True) -> TrainingRun:
    """Create a round and its steps and enqueue them as a chain of dependent jobs (on commit).

    The project's saved engine settings (ROUND_ADVANCED) apply where `params` leaves them out, so a round
    from the page, the API or the trigger trains the same way. Raises RoundInProgress when the project
    already has a queued or running round.
    """
    params = validate_round_params({**advanced_params(saved_round_params(project)), **(params or {})},
                                   base_model=project.base_model or "demo")
    if params["reward"] and params["algorithm"] in ("ppo", "grpo"):
        check_reward(project, params)
    from lensloop import storage

    storage.check()  # with object storage: a bucket the checkpoints cannot reach fails now, not after training
    if not PreferencePair.objects.filter(project=project).exists():
        raise LoopError("this project has no preference pairs yet: rank some tasks before starting a round")
    base_policy(project)
    try:
        with transaction.atomic():
            round_run = TrainingRun.objects.create(project=project, kind=K.ROUND, config=params, created_by=user)
            round_run.run_dir = str(_fresh_dir(runs_root() / f"round-{round_run.pk}"))
            round_run.save(update_fields=["run_dir"])
            steps = []
            for position, kind in enumerate(ROUND_STEPS[params["algorithm"]], start=1):
                step = TrainingRun.objects.create(
                    project=project, kind=kind, round=round_run, position=position, created_by=user, config={}
                )
                step.run_dir = str(Path(round_run.run_dir) / f"{position}-{kind}")
                step.save(update_fields=["run_dir"])
                steps.append(step)
            if enqueue:
                transaction.on_commit(lambda: enqueue_steps(steps), robust=True)
    except IntegrityError:
        raise RoundInProgress(f"project {project.slug} already has a round in progress; wait or cancel it") from None
    return round_run


def start_generate(
    *,
    project: Project,
    user=None,
    prompts: int | None = None,
    compare: tuple[str, str] | None = None,
    enqueue: bool = True,
) -> TrainingRun:
    """A standalone generate run: K candidates per train prompt from the active policy, as new tasks.
    With ``compare`` (two policy labels), every task mixes candidates of both versions, so that the
    human rankings feed the leaderboard of versions."""
    base_policy(project)
    config = {"generate_prompts": prompts or ROUND_DEFAULTS["generate_prompts"], "temperature": ROUND_DEFAULTS["temperature"]}
    if compare:
        labels = list(compare)
        found = set(ModelVersion.objects.filter(project=project, kind="policy", label__in=labels).values_list("label", flat=True))
        if len(set(labels)) != 2 or found != set(labels):
            raise LoopError(f"compare needs two different policy versions of {project.slug}; got {labels}")
        if project.candidates_per_task < 2:
            raise LoopError("comparing versions needs at least 2 candidates per task")
        config["compare"] = labels
    with transaction.atomic():
        run = TrainingRun.objects.create(project=project, kind=K.GENERATE, created_by=user, config=config)
        run.run_dir = str(_fresh_dir(runs_root() / f"generate-{run.pk}"))
        run.save(update_fields=["run_dir"])
        if enqueue:
            transaction.on_commit(lambda: enqueue_steps([run]), robust=True)
    return run


def enqueue_steps(steps: list[TrainingRun]) -> None:
    """Enqueue steps as a chain: each job depends on the one before.

    Called on commit with ``robust=True``: when Redis is unreachable the run is saved all the same and
    the answer is not a 500; ``requeue_lost_steps`` (the workers' housekeeping) enqueues it later."""
    from lensloop.queue import get_queue
    from rlhf.jobs import run_step

    previous = None
    for step in steps:
        queue = get_queue("generate" if step.kind == K.GENERATE else "train")
        job = queue.enqueue(run_step, step.pk, depends_on=previous, job_timeout=-1, result_ttl=86400, failure_ttl=86400 * 7)
        TrainingRun.objects.filter(pk=step.pk).update(job_id=job.id)
        previous = job


def cancel_run(run: TrainingRun) -> TrainingRun:
    """Cancel a run (a round cancels all its unfinished steps). A running engine is killed by its job."""
    now = timezone.now()
    with transaction.atomic():
        target = run.round or run
        ids = [target.pk, *target.steps.values_list("pk", flat=True)] if target.kind == K.ROUND else [target.pk]
        TrainingRun.objects.filter(pk__in=ids, state__in=TrainingRun.ACTIVE_STATES).update(
            state=S.CANCELLED, finished_at=now
        )
    target.refresh_from_db()
    return target


def fail_run(run: TrainingRun, error: str) -> None:
    """Mark ``run`` failed; in a round, the round fails and its later steps are cancelled."""
    now = timezone.now()
    with transaction.atomic():
        TrainingRun.objects.filter(pk=run.pk).update(state=S.FAILED, error=error[-10000:], finished_at=now, pid=None)
        if run.round_id:
            TrainingRun.objects.filter(pk=run.round_id, state__in=TrainingRun.ACTIVE_STATES).update(
                state=S.FAILED, error=f"step {run.position} ({run.kind}) failed: {error[-2000:]}", finished_at=now
            )
            TrainingRun.objects.filter(round_id=run.round_id, state=S.QUEUED).update(state=S.CANCELLED, finished_at=now)


def reap_stale_runs() -> int:
    """Runs still 'running' whose job stopped beating (a killed worker) become failed, never running forever."""
    limit = timezone.now() - stale_after()
    stale = list(
        TrainingRun.objects.filter(state=S.RUNNING, heartbeat_at__lt=limit).exclude(kind=K.ROUND)
    )
    for run in stale:
        fail_run(run, "the worker running this step stopped (killed or lost); resume the round to retry the step")
    return len(stale)


LOST_AFTER = timedelta(seconds=30)  # a ready step without a live job for this long was lost by the queue


def requeue_lost_steps(*, grace: timedelta = LOST_AFTER) -> list[TrainingRun]:
    """Enqueue again the steps that are next to run but that no job in Redis will run; returns them.

    Until a worker takes it, an enqueued step lives only in Redis. A Redis restarted without persistence
    (or one that was down when the round was committed, or a worker killed between finishing a step and
    enqueuing the next) left the round 'running' with its next step 'queued' and nothing to run it,
    forever (bench/faults.py). A step is lost when it is next (a standalone run, the first step of its
    round, or its predecessor succeeded more than ``grace`` ago), and its job is missing or neither
    queued nor started (deferred on a predecessor that finished, or ended without having run it).
    It is enqueued again with the steps after it; safe against a job that turns up after all, since
    ``rlhf.jobs._claim`` runs a step only once, and only after the step before it has succeeded.
    """
    from redis.exceptions import RedisError
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from lensloop.queue import redis_connection

    now = timezone.now()
    lost = []
    for run in TrainingRun.objects.filter(state=S.QUEUED).exclude(kind=K.ROUND).select_related("round"):
        if run.round_id:
            if run.round.state not in TrainingRun.ACTIVE_STATES:
                continue
            previous = TrainingRun.objects.filter(round_id=run.round_id, position=run.position - 1).first()
            if previous is not None and (previous.state != S.SUCCEEDED or previous.finished_at > now - grace):
                continue
        if run.created_at > now - grace:
            continue
        try:
            status = Job.fetch(run.job_id, connection=redis_connection()).get_status() if run.job_id else None
        except NoSuchJobError:
            status = None
        except RedisError as exc:
            log.warning("cannot look for lost jobs: Redis unreachable (%s)", exc)
            return lost
        if status in ("queued", "started", "scheduled"):
            continue
        later = [] if not run.round_id else list(
            TrainingRun.objects.filter(round_id=run.round_id, state=S.QUEUED, position__gt=run.position).order_by("position")
        )
        log.warning("run %s (%s) waits for a job the queue does not hold (%s): enqueuing it again",
                    run.pk, run.kind, status or "no such job")
        enqueue_steps([run, *later])
        lost.append(run)
    return lost


def resume_round(round_run: TrainingRun) -> TrainingRun:
    """Retry a failed or cancelled round from its first unfinished step (the step starts afresh)."""
    if round_run.kind != K.ROUND:
        raise LoopError("only rounds can be resumed")
    if round_run.state not in (S.FAILED, S.CANCELLED):
        raise LoopError(f"round {round_run.pk} is {round_run.state}; only failed or cancelled rounds resume")
    try:
        with transaction.atomic():
            TrainingRun.objects.filter(pk=round_run.pk).update(state=S.QUEUED, error="", finished_at=None)
            pending = list(round_run.steps.exclude(state=S.SUCCEEDED).order_by("position"))
            TrainingRun.objects.filter(pk__in=[s.pk for s in pending]).update(
                state=S.QUEUED, error="", finished_at=None, started_at=None
            )
            transaction.on_commit(lambda: enqueue_steps(pending), robust=True)
    except IntegrityError:
        raise RoundInProgress("another round of this project is in progress") from None
    round_run.refresh_from_db()
    return round_run


@transaction.atomic
def activate_versions(*versions: ModelVersion) -> None:
    """Make these versions the active ones of their kinds (one transaction, so a reader never sees none)."""
    for version in versions:
        ModelVersion.objects.filter(project=version.project, kind=version.kind, active=True).exclude(
            pk=version.pk
        ).update(active=False)
        ModelVersion.objects.filter(pk=version.pk).update(active=True)


def activate_version(version: ModelVersion) -> ModelVersion:
    """Make one version the active one of its kind by hand: a rollback to an earlier policy (or the base
    model), or back to a better one. The next round continues from it and new tasks are sampled from it.

    Refused while a round of the project is queued or running (it registers its own versions when it
    ends, and its policy step may already have started from the current one) and when the version's
    files are gone.
    """
    project = version.project
    if TrainingRun.objects.filter(project=project, kind=K.ROUND, state__in=TrainingRun.ACTIVE_STATES).exists():
        raise RoundInProgress(f"a round of {project.slug} is in progress: wait for it to end or cancel it, "
                              f"then make {version.label} active")
    if version.path and not Path(version.path).exists():
        from lensloop import storage

        try:
            storage.local_folder(version.path)  # with object storage, the bucket may still hold them
        except storage.StorageError as exc:
            raise LoopError(f"{version.label} cannot be made active: its files are gone ({version.path}): "
                            f"{exc.message}") from None
        if not Path(version.path).exists():
            raise LoopError(f"{version.label} cannot be made active: its files are gone ({version.path})")
    from rlhf.gate import supersede_pending

    with transaction.atomic():
        activate_versions(version)
        # A gate still waiting for rankings must not later replace what an admin chose.
        supersede_pending(project, why=f"{version.label} was made active by hand before this gate was decided")
        if version.kind == ModelVersion.Kind.POLICY and version.gate_state in (
            ModelVersion.Gate.FAILED, ModelVersion.Gate.SUPERSEDED
        ):
            note = f" Made active by hand on {timezone.now():%Y-%m-%d %H:%M} UTC."
            ModelVersion.objects.filter(pk=version.pk).update(gate_reason=version.gate_reason + note)
    log.info("%s: %s %s made active by hand", project.slug, version.kind, version.label)
    version.refresh_from_db()
    return version


def pairs_since_last_round(project: Project) -> int:
    last = (
        TrainingRun.objects.filter(project=project, kind=K.ROUND).exclude(state=S.CANCELLED).order_by("-id").first()
    )
    pairs = PreferencePair.objects.filter(project=project)
    if last is not None and last.snapshot.get("last_ranking_id"):
        pairs = pairs.filter(ranking_id__gt=last.snapshot["last_ranking_id"])
    elif last is not None:
        pairs = pairs.filter(created_at__gt=last.created_at)
    return pairs.count()


def maybe_start_auto_rounds() -> list[TrainingRun]:
    """Start a round for every project whose automatic trigger fired (never two at once: the
    database's one-active-round constraint settles races between workers)."""
    from rlhf.models import LoopSettings

    started = []
    for settings_row in LoopSettings.objects.filter(auto_round_pairs__gt=0).select_related("project"):
        project = settings_row.project
        if TrainingRun.objects.filter(project=project, kind=K.ROUND, state__in=TrainingRun.ACTIVE_STATES).exists():
            continue
        if pairs_since_last_round(project) < settings_row.auto_round_pairs:
            continue
        try:
            started.append(start_round(project=project, params=settings_row.round_params))
        except RoundInProgress:
            continue  # another worker started it a moment ago
        except LoopError as exc:
            log.warning("automatic round of project %s not started: %s", project.slug, exc.message)
    return started


GATE_SETTINGS = ("promotion_gate", "gate_reward", "gate_comparisons", "eval_prompts")


def loop_settings_set(*, project: Project, auto_round_pairs: int | None = None, round_params: dict | None = None,
                      **gate_settings):
    """Change a project's automatic-round trigger, the parameters automatic rounds use, and/or the
    held-out evaluation and promotion gate (``GATE_SETTINGS``; docs/loop.md).

    Parameters are validated like a launched round's, so an automatic round never fails on them; saved
    parameters that `round_params` does not name keep their values.
    """
    from rlhf.engine.rewards import REWARDS
    from rlhf.models import LoopSettings

    unknown = sorted(set(gate_settings) - set(GATE_SETTINGS))
    if unknown:
        raise LoopError(f"unknown loop settings {unknown}; known: auto_round_pairs, round_params, {', '.join(GATE_SETTINGS)}")
    defaults = {k: v for k, v in gate_settings.items() if v is not None}
    if "promotion_gate" in defaults and defaults["promotion_gate"] not in LoopSettings.PromotionGate.values:
        raise LoopError(f"promotion_gate must be one of {LoopSettings.PromotionGate.values}")
    if defaults.get("gate_reward") and defaults["gate_reward"] not in REWARDS:
        raise LoopError(f"gate_reward {defaults['gate_reward']!r} is not one of {sorted(REWARDS)}")
    for key in ("gate_comparisons", "eval_prompts"):
        if key in defaults and (not isinstance(defaults[key], int) or isinstance(defaults[key], bool)
                                or defaults[key] < (1 if key == "gate_comparisons" else 0)):
            raise LoopError(f"{key} must be a whole number" + (" of at least 1" if key == "gate_comparisons" else " (0 = all)"))
    if auto_round_pairs is not None:
        if auto_round_pairs < 0:
            raise LoopError("auto_round_pairs must be 0 (off) or a positive number of pairs")
        defaults["auto_round_pairs"] = auto_round_pairs
    if round_params is not None:
        defaults["round_params"] = validate_round_params({**saved_round_params(project), **round_params})
        if round_params.get("reward"):
            check_reward(project, defaults["round_params"])
    settings_row, _ = LoopSettings.objects.update_or_create(project=project, defaults=defaults)
    return settings_row
