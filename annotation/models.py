"""The human side of lensloop: projects, images, prompts, candidates, the ranking queue and its output.

Counters on ``RankingTask`` (``leased_count``, ``completed_count``) and its ``state`` are only changed
by ``annotation.services.queue`` while it holds the task row's lock; see the comments there.

Foreign keys to Project have no index of their own (``db_index=False``) where a composite index that
starts with the project covers them: every index is maintained on each of a million-row import's rows.

Every foreign key has its database constraint. (Prompt.project, RankingTask.project and Candidate.prompt
went without one for a while, for import speed; migration 0005 restored them, and the PostgreSQL import
keeps its speed another way: see ``annotation.services.import_writes._copy_writes``.)
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Project(models.Model):
    class TaskType(models.TextChoices):
        CAPTION = "caption", "Caption"
        VQA = "vqa", "Visual question answering"
        # Answers are boxes in the text format of rlhf.engine.rewards.parse_boxes (docs/import-export.md, "Box
        # answers"); the ranking page draws them over the image.
        GROUNDING = "grounding", "Grounding (referring expression → box)"
        DETECTION = "detection", "Detection (every object → boxes)"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    task_type = models.CharField(max_length=16, choices=TaskType.choices, default=TaskType.CAPTION)
    instructions = models.TextField(blank=True, help_text="Markdown shown to annotators beside each task.")
    candidates_per_task = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(2), MaxValueValidator(9)], help_text="K, from 2 to 9."
    )
    overlap = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(50)], help_text="Annotators per task."
    )
    lease_minutes = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1)], help_text="How long a taken task stays reserved."
    )
    base_model = models.CharField(
        max_length=500, blank=True, help_text="Base policy: a local model folder or hub id; empty = demo model."
    )
    heldout_fraction = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Share of imported prompts without a split that are held out for evaluation, chosen by hash "
        "(0 to 0.5; rows that say split: eval are held out whatever this is).",
    )
    # Gold tasks (annotation.services.gold): tasks with a known ordering, mixed into every annotator's stream.
    gold_rate = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of the tasks an annotator is handed that are gold tasks, while gold tasks they have not "
        "ranked remain (0 to 1).",
    )
    gold_min_count = models.PositiveSmallIntegerField(
        default=10, validators=[MinValueValidator(1)],
        help_text="Gold tasks an annotator must have ranked before their gold accuracy is judged.",
    )
    gold_threshold = models.FloatField(
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Gold accuracy (share of a gold ordering's pairs ordered the same way) below which an annotator "
        "is warned (0 to 1).",
    )
    gold_pause = models.BooleanField(
        default=False, help_text="Pause an annotator whose gold accuracy falls below the threshold, until a "
        "project admin re-admits them.",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(candidates_per_task__gte=2, candidates_per_task__lte=9), name="project_k_2_to_9"
            ),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(
                condition=Q(heldout_fraction__gte=0, heldout_fraction__lte=0.5), name="project_heldout_fraction_range"
            ),
            models.CheckConstraint(condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="project_gold_rate_range"),
            models.CheckConstraint(
                condition=Q(gold_threshold__gte=0, gold_threshold__lte=1), name="project_gold_threshold_range"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        ANNOTATOR = "annotator", "Annotator"
        ADMIN = "admin", "Project admin"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField(auto_now_add=True)
    # Gold accuracy (annotation.services.gold): a warning, and a pause (no new leases) where the project says
    # so, until a project admin re-admits them; accuracy is then judged on gold rankings made after gold_since.
    gold_warned_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_reason = models.CharField(max_length=300, blank=True, default="")
    gold_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class Image(models.Model):
    """An image stored once, content-addressed by the sha256 of its stored bytes."""

    sha256 = models.CharField(max_length=64, unique=True)
    file = models.CharField(
        max_length=200, help_text="Where under MEDIA_ROOT: a file of its own, or a place in a pack (annotation.images)."
    )
    format = models.CharField(max_length=16)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    ground_truth = models.JSONField(null=True, blank=True, help_text="e.g. labels, counts, boxes")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.width}×{self.height} {self.format})"


class Prompt(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        EVAL = "eval", "Eval"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="prompts", db_index=False
    )
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="prompts")
    text = models.TextField()
    reference = models.JSONField(default=list, blank=True, help_text="Reference answers, a list of strings.")
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    ground_truth = models.JSONField(null=True, blank=True)
    external_id = models.CharField(max_length=200, blank=True, help_text="The manifest's id for this row.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["project", "split"])]

    def __str__(self) -> str:
        return self.text[:60]


class Candidate(models.Model):
    """One answer to a prompt: from a model version, written by a human, or imported."""

    HUMAN = "human"
    IMPORT = "import"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="candidates")
    text = models.TextField()
    source = models.CharField(max_length=100, help_text="Model version label, 'human' or 'import'.")
    meta = models.JSONField(default=dict, blank=True, help_text="Generation metadata: logprob, sampling, …")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # A plain index: Django's db_index on a CharField adds a second, LIKE-only one on PostgreSQL.
        indexes = [models.Index(fields=["source"], name="candidate_source_idx")]

    def __str__(self) -> str:
        return self.text[:60]


class RankingTask(models.Model):
    """K candidates of one prompt, to be ranked by ``required_annotations`` different annotators.

    ``candidate_ids`` is a list rather than a join table: a task's candidates never change after it is
    opened, and a million-task import then writes one row per task instead of K + 1.
    """

    class State(models.TextChoices):
        OPEN = "open", "Open"  # leased + completed < required: the queue may hand it out
        FULL = "full", "Fully leased"  # every remaining slot is leased to someone
        DONE = "done", "Done"  # completed == required
        CLOSED = "closed", "Closed"  # withdrawn by an admin
        GOLD = "gold", "Gold"  # has a known ordering; handed to every annotator once, counters unused

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="tasks", db_index=False
    )
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    candidate_ids = models.JSONField(help_text="IDs of the task's K candidates.")
    priority = models.FloatField(default=0.0, help_text="Higher first; the loop sets it (active learning).")
    required_annotations = models.PositiveSmallIntegerField(default=1)
    leased_count = models.PositiveSmallIntegerField(default=0)
    completed_count = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    origin = models.CharField(max_length=100, blank=True, help_text="What opened it: 'import', a run id, …")
    gold_ordering = models.JSONField(
        null=True, blank=True, help_text="A gold task's known ordering (groups of candidate ids, best first)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # The queue's scan: open tasks of a project, best first.
            models.Index(fields=["project", "state", "-priority", "id"], name="task_queue_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(completed_count__lte=models.F("required_annotations")), name="task_not_overfilled"
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.pk} ({self.state})"


class Assignment(models.Model):
    """An annotator's lease on a task, and what became of it. One row per (task, annotator)."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="assignments")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "annotator"], name="assignment_once_per_annotator")]
        indexes = [
            models.Index(fields=["annotator", "project", "state"], name="assignment_own_idx"),
            models.Index(fields=["expires_at"], condition=Q(state="active"), name="assignment_active_exp_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.annotator} on task {self.task_id} ({self.state})"


class Ranking(models.Model):
    """An annotator's ordering of a task's candidates, best first; ties share a group."""

    # The flags an annotator may raise on a task, by name (the API's and the page's) with their label; each
    # is the boolean column ``flag_<name>``. Every list of flags is derived from this one.
    FLAGS = {"all_bad": "All bad", "unsafe": "Unsafe", "image_unclear": "Image unclear"}

    class Review(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"

    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="rankings")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rankings", db_index=False)
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings")
    ordering = models.JSONField(help_text="Groups of candidate ids, best first, e.g. [[3], [1, 2], [4]].")
    flag_all_bad = models.BooleanField(default=False)
    flag_unsafe = models.BooleanField(default=False)
    flag_image_unclear = models.BooleanField(default=False)
    rationale = models.TextField(blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    client_uuid = models.UUIDField(unique=True, default=uuid.uuid4)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # A project admin's review (annotation.services.reviews). Rejected rankings leave every export, and so
    # every later training round. The columns have database defaults too: the PostgreSQL queue inserts
    # rankings with its own SQL (queue/postgres.py) and leaves them out.
    review = models.CharField(max_length=8, choices=Review.choices, default=Review.PENDING, db_default=Review.PENDING)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True, default="", db_default="")
    # The mean, over this ranking's pairs, of the reliability model's confidence that the pair's order is true
    # (annotation.services.quality; null until computed or when it has no pair): low = against the consensus.
    consensus = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "annotator"], name="ranking_once_per_annotator")]
        indexes = [
            models.Index(fields=["project", "created_at"]),
            models.Index(fields=["project", "annotator", "created_at"], name="ranking_progress_idx"),
        ]

    def __str__(self) -> str:
        return f"ranking {self.pk} of task {self.task_id}"

    @property
    def flags(self) -> list[str]:
        return [name for name in self.FLAGS if getattr(self, f"flag_{name}")]

    @classmethod
    def flag_columns(cls, flags) -> dict[str, bool]:
        """``{"flag_all_bad": True, ...}``: every flag column, set for the names in ``flags``."""
        return {f"flag_{name}": name in flags for name in cls.FLAGS}


class PreferencePair(models.Model):
    """chosen ≻ rejected, implied by one ranking; ``margin`` is the distance between their groups."""

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="pairs")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pairs", db_index=False)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="+")
    chosen = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    rejected = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    margin = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(db_index=True)
    # From the project's quality report (annotation.services.quality), null until it is computed:
    # ``confidence``, the reliability model's posterior that chosen really is better than rejected given every
    # vote on the pair; ``agreement``, the share of the task's annotators who ordered the pair strictly and
    # ordered it this way (null when only one did).
    confidence = models.FloatField(null=True, blank=True)
    agreement = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "created_at"])]
        constraints = [
            models.CheckConstraint(condition=~Q(chosen=models.F("rejected")), name="pair_distinct"),
            models.CheckConstraint(condition=Q(margin__gte=1), name="pair_margin_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.chosen_id} ≻ {self.rejected_id} (+{self.margin})"


class QualityReport(models.Model):
    """The last agreement and reliability figures of a project (``annotation.services.quality``), computed in
    a background job on the rankings that were not rejected: ``rankings`` of them, the newest ``last_ranking_id``.
    ``data``: ``{"project": {...}, "annotators": {"<user id>": {...}}}``, see ``quality_report_compute``."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="quality_report")
    computed_at = models.DateTimeField()
    rankings = models.PositiveIntegerField(default=0)
    last_ranking_id = models.BigIntegerField(null=True, blank=True)
    data = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"quality of {self.project_id} at {self.computed_at:%Y-%m-%d %H:%M}"


class ImportJob(models.Model):
    """An import running in the background (``annotation.services.import_jobs``): the uploaded bundle and its
    options, the progress as a worker checks and writes it, and the report at the end. Nothing of an import is
    in the other tables until it has succeeded (its rows are written in one transaction)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        REJECTED = "rejected", "Rejected"  # all or nothing, and something was wrong: nothing written
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs", db_index=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    filename = models.CharField(max_length=255, help_text="The uploaded file's name, as the user's browser gave it.")
    upload = models.CharField(max_length=500, help_text="The bundle's path on the server; removed when the import ends.")
    size_bytes = models.PositiveBigIntegerField(default=0)
    options = models.JSONField(default=dict, help_text="mode, format, manifest, split, limit, heldout")
    progress = models.JSONField(default=dict, help_text="phase, fraction and the report's counts so far")
    report = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the process running the import")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "-created_at"], name="importjob_project_created")]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.filename} into {self.project_id} ({self.state})"
