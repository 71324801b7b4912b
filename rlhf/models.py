"""The machine side of lensloop: model versions and training runs.

Lineage is answerable from these rows: a reward ModelVersion points at the TrainingRun that trained it,
whose ``snapshot`` names the rankings it used; a policy ModelVersion points at its run, its parent
policy and the reward model it was optimised against. The candidates a version generated and the ranking
tasks a run opened are linked by key (``GeneratedCandidate``, ``RunTask``): rlhf-owned rows pointing at the
annotation app's, since the annotation app knows nothing of rlhf. Their ``source`` and ``origin`` texts
are what annotators and exports see; no query of the loop joins on them.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from annotation.models import Candidate, Project, RankingTask


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        ROUND = "round", "Round"
        EXPORT = "export", "Export snapshot"
        REWARD = "reward", "Reward model"
        PPO = "ppo", "PPO"
        GRPO = "grpo", "GRPO"
        DPO = "dpo", "DPO"
        SFT = "sft", "SFT"
        EVALUATE = "evaluate", "Evaluate"
        REGISTER = "register", "Register versions"
        GENERATE = "generate", "Generate candidates"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)
    POLICY_KINDS = (Kind.PPO, Kind.GRPO, Kind.DPO, Kind.SFT)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    round = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(default=0, help_text="Order of this step in its round.")
    config = models.JSONField(default=dict, blank=True, help_text="Validated engine config, or round parameters.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=list, blank=True, help_text="Logged metrics, one object per logged step.")
    result = models.JSONField(default=dict, blank=True, help_text="Final metrics (result.json).")
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    run_dir = models.CharField(max_length=500, blank=True)
    snapshot = models.JSONField(default=dict, blank=True, help_text="The data it used: rankings, pairs, files.")
    input_versions = models.ManyToManyField("ModelVersion", blank=True, related_name="used_by_runs")
    job_id = models.CharField(max_length=64, blank=True)
    pid = models.IntegerField(null=True, blank=True, help_text="Engine subprocess while running.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # Never two rounds of one project at once (the database enforces it, not only the view).
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(kind="round", state__in=["queued", "running"]),
                name="one_active_round_per_project",
            ),
        ]
        indexes = [models.Index(fields=["project", "kind", "state"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state not in self.ACTIVE_STATES

    @property
    def duration(self) -> str:
        """How long it ran, e.g. "47 s", "3 min 5 s", "2 h 4 min" ("" until it has started and finished)."""
        if not (self.started_at and self.finished_at):
            return ""
        seconds = max(0, round((self.finished_at - self.started_at).total_seconds()))
        minutes, secs = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return f"{hours} h {minutes} min"
        return f"{minutes} min {secs} s" if minutes else f"{secs} s"

    @property
    def progress(self) -> float:
        """0..1, the one number every progress bar shows: the pages (``rlhf.ui_selectors``) read it here, the
        pages' script (``static/js/runs.js``) from the API's ``progress`` (and the text beside it, from
        ``status_text``, as the API's ``status``). A round counts its finished steps
        whole and its running step in part, so its bar moves while the policy trains, not only between steps.
        A round's steps come from ``self.steps.all()``, so prefetch them when listing rounds."""
        if self.kind == self.Kind.ROUND and self.pk:
            if self.state == self.State.SUCCEEDED:
                return 1.0
            steps = list(self.steps.all())
            if steps:
                done = sum(1.0 if s.state == self.State.SUCCEEDED else s.progress if s.state == self.State.RUNNING else 0.0
                           for s in steps)
                return min(1.0, done / len(steps))
        return min(1.0, self.step / self.total_steps) if self.total_steps else (1.0 if self.finished else 0.0)

    def status_text(self, steps: list[TrainingRun] | None = None) -> str:
        """The sentence under the progress bar: what is happening now, or how it ended. The one source of
        it: the pages render it, the API's runs carry it as ``status`` for the pages' script to show.

        ``steps`` are a round's steps, or, for a step of a round, its siblings (fetched when not given)."""
        S = self.State
        if self.kind == self.Kind.ROUND:
            steps = sorted(steps if steps is not None else self.steps.all(), key=lambda s: s.position)
            current = next((s for s in steps if s.state == S.RUNNING), None)
            failed = next((s for s in steps if s.state == S.FAILED), None)
            if self.state == S.QUEUED or (self.state == S.RUNNING and current is None):
                return "waiting for a worker"
            if current is not None:
                counter = f" {current.step}/{current.total_steps}" if current.total_steps else ""
                return f"step {current.position} of {len(steps)}: {current.get_kind_display()}{counter}"
            if self.state == S.FAILED and failed is not None:
                return f"failed at step {failed.position} ({failed.get_kind_display()})"
            return ""  # finished: the state badge says it all
        if self.state == S.QUEUED:
            # A later step of a round is queued in rq as a deferred job: no worker takes it before the step
            # before it has succeeded, so "waiting for a worker" would send people looking for a worker.
            previous = self.waiting_for(steps)
            if previous is not None:
                return f"waiting for step {previous.position} ({previous.get_kind_display()})"
            return "waiting for a worker"
        if self.state == S.RUNNING:
            return f"{self.step}/{self.total_steps}" if self.total_steps else "starting"
        return ""

    @property
    def status(self) -> str:
        """``status_text`` with the steps fetched (what the API serialises)."""
        return self.status_text()

    def waiting_for(self, siblings: list[TrainingRun] | None = None) -> TrainingRun | None:
        """The step of the same round a queued step waits for: its rq job depends on the previous step's
        (``rlhf.services.enqueue_steps``), so until that one has succeeded no worker will take it. None when
        nothing blocks it (a standalone run, the round's first step, or the previous step is done).
        ``siblings`` are the round's steps where the caller has them; else they are fetched."""
        if self.state != self.State.QUEUED or not self.round_id or self.position <= 1:
            return None
        if siblings is None:
            siblings = list(TrainingRun.objects.filter(round_id=self.round_id, position=self.position - 1))
        previous = next((s for s in siblings if s.position == self.position - 1), None)
        return previous if previous is not None and previous.state in self.ACTIVE_STATES else None


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"

    class Weights(models.TextChoices):
        ADAPTER = "adapter", "LoRA adapter"
        FULL = "full", "Full weights"

    class Gate(models.TextChoices):
        """What the promotion gate (``rlhf.gate``) made of a round's new policy."""

        NONE = "", "No gate"  # the base model, reward models, versions from before the gate
        PENDING = "pending", "Waiting for side-by-side rankings"
        PASSED = "passed", "Passed the gate"
        FAILED = "failed", "Held back by the gate"
        OFF = "off", "Gate off"
        SUPERSEDED = "superseded", "Superseded"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    label = models.CharField(max_length=100, help_text="Shown as candidates' source, e.g. policy-v2.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    reward_model = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="policies",
        help_text="For a policy: the reward model it was optimised against.",
    )
    base_model = models.CharField(max_length=500, help_text="Base weights: a folder, a hub id, or 'demo'.")
    path = models.CharField(max_length=500, blank=True, help_text="Adapter or weights folder; empty = the base.")
    weights = models.CharField(max_length=8, choices=Weights.choices, default=Weights.ADAPTER)
    metrics = models.JSONField(default=dict, blank=True)
    run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="versions")
    active = models.BooleanField(default=False)
    gate_state = models.CharField(max_length=12, choices=Gate.choices, default=Gate.NONE, blank=True)
    gate_reason = models.TextField(blank=True, help_text="Why the gate let the policy through or held it back.")
    gate = models.JSONField(
        default=dict, blank=True, help_text="The gate's evidence: method, the version compared with, figures."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["gate_state"], condition=Q(gate_state="pending"), name="version_gate_pending_idx")]
        constraints = [
            models.UniqueConstraint(fields=["project", "label"], name="version_label_unique"),
            models.UniqueConstraint(
                fields=["project", "kind"], condition=Q(active=True), name="one_active_version_per_kind"
            ),
        ]

    def __str__(self) -> str:
        return self.label


class LoopSettings(models.Model):
    """Per-project settings of the loop: automatic rounds and their default parameters, the held-out
    evaluation and the promotion gate (docs/loop.md)."""

    class PromotionGate(models.TextChoices):
        AUTO = "auto", "Verifiable reward where there is ground truth, else reward model and people"
        HUMAN = "human", "Reward model and side-by-side rankings by people"
        OFF = "off", "Off: every round's policy becomes active"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="loop_settings")
    auto_round_pairs = models.PositiveIntegerField(
        default=0, help_text="Start a round whenever this many new preference pairs arrived (0 = off)."
    )
    round_params = models.JSONField(default=dict, blank=True, help_text="Parameters of automatic rounds.")
    promotion_gate = models.CharField(
        max_length=8, choices=PromotionGate.choices, default=PromotionGate.AUTO,
        help_text="How a round's new policy must show it is not worse than the active one before it becomes active.",
    )
    gate_reward = models.CharField(
        max_length=64, blank=True,
        help_text="Verifiable reward the gate scores held-out answers with (rlhf.engine.rewards); empty = the "
        "round's verifiable_reward, and without one the gate asks people.",
    )
    gate_comparisons = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1)],
        help_text="Side-by-side rankings of the new and the active policy the human gate waits for.",
    )
    eval_prompts = models.PositiveIntegerField(
        default=200,
        help_text="Held-out prompts every round evaluates versions on, the first by id, so the same set each "
        "round (0 = all).",
    )

    def __str__(self) -> str:
        return f"loop settings of {self.project}"


class GeneratedCandidate(models.Model):
    """The model version that wrote a candidate (and the run that sampled it): the key its lineage, the
    leaderboard and the promotion gate follow, written in the transaction that stores the candidate."""

    candidate = models.OneToOneField(Candidate, on_delete=models.CASCADE, primary_key=True, related_name="rlhf_lineage")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="generated_candidates")
    run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="generated_candidates")

    def __str__(self) -> str:
        return f"candidate {self.candidate_id} by {self.model_version_id}"


class RunTask(models.Model):
    """A ranking task a run opened: a generate run's tasks, and the side-by-side tasks that judge a policy
    at its promotion gate (``gate_for``), written in the transaction that opens the task."""

    task = models.OneToOneField(RankingTask, on_delete=models.CASCADE, primary_key=True, related_name="rlhf_lineage")
    run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="opened_tasks")
    gate_for = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.CASCADE, related_name="gate_tasks",
        help_text="The policy whose promotion gate these side-by-side rankings judge.",
    )

    def __str__(self) -> str:
        return f"task {self.task_id} of run {self.run_id}"
