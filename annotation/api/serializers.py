"""Input validation and output shapes of the annotation API."""

import uuid

from django.contrib.auth import get_user_model
from django.urls import reverse
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from annotation.importers import FORMATS as IMPORT_FORMATS
from annotation.importers import HELDOUT
from annotation.models import Membership, Project, Ranking
from annotation.services.exports import FORMATS
from annotation.services.imports import MODES
from annotation.services.projects import check_model_path
from annotation.services.reviews import MAX_NOTE


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = [
            "id", "name", "slug", "task_type", "instructions", "candidates_per_task", "overlap",
            "lease_minutes", "base_model", "heldout_fraction", "gold_rate", "gold_min_count", "gold_threshold",
            "gold_pause", "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"slug": {"required": False}}

    def validate_base_model(self, value: str) -> str:
        """Only folders under the configured model roots, unless a superuser asks (``check_model_path``)."""
        if self.instance is not None and value == self.instance.base_model:
            return value
        request = self.context.get("request")
        return check_model_path(value, user=request.user if request else None)


class CandidateOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()


class TaskSerializer(serializers.Serializer):
    """A task as the annotator sees it: candidates shuffled for them, sources hidden."""

    task_id = serializers.IntegerField()
    project = serializers.CharField()
    prompt = serializers.CharField()
    image_url = serializers.CharField()
    image_width = serializers.IntegerField()
    image_height = serializers.IntegerField()
    candidates = CandidateOutSerializer(many=True)
    expires_at = serializers.DateTimeField()
    lease_seconds_left = serializers.IntegerField()


FLAG_CHOICES = list(Ranking.FLAGS)
MAX_RATIONALE = 10_000


class SubmitSerializer(serializers.Serializer):
    """The shape of a submit, for the schema; ``parse_submit`` applies the same rules at runtime."""

    ordering = serializers.JSONField(help_text="Groups of candidate ids, best first; ties share a group.")
    client_uuid = serializers.UUIDField(help_text="Fresh per ranking; a repeat with the same id is a no-op.")
    flags = serializers.ListField(
        child=serializers.ChoiceField(choices=FLAG_CHOICES), required=False, default=list
    )
    rationale = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_RATIONALE)
    time_spent_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0, default=None)


def parse_submit(data) -> dict:
    """``SubmitSerializer``'s checks without its per-request copy of every field (this runs on every
    submit). Returns the validated values; raises ValidationError({field: [message]}) as it would."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["Invalid data. Expected a dictionary."]})
    errors: dict[str, list[str]] = {}
    if "ordering" not in data:
        errors["ordering"] = ["This field is required."]
    client_uuid = data.get("client_uuid")
    if client_uuid is None:
        errors["client_uuid"] = ["This field is required."]
    else:
        try:
            client_uuid = uuid.UUID(str(client_uuid))
        except ValueError:
            errors["client_uuid"] = ["Must be a valid UUID."]
    flags = data.get("flags", [])
    if not isinstance(flags, list):
        errors["flags"] = [f'Expected a list of items but got type "{type(flags).__name__}".']
    elif any(flag not in FLAG_CHOICES for flag in flags):
        errors["flags"] = [f"Each flag must be one of {FLAG_CHOICES}."]
    rationale = data.get("rationale", "")
    if isinstance(rationale, int | float) and not isinstance(rationale, bool):
        rationale = str(rationale)  # as DRF's CharField does
    if not isinstance(rationale, str):
        errors["rationale"] = ["Not a valid string."]
    elif len(rationale.strip()) > MAX_RATIONALE:
        errors["rationale"] = [f"Ensure this field has no more than {MAX_RATIONALE} characters."]
    time_spent_ms = data.get("time_spent_ms")
    if time_spent_ms is not None:
        if isinstance(time_spent_ms, str) and time_spent_ms.strip().isdigit():
            time_spent_ms = int(time_spent_ms)
        if isinstance(time_spent_ms, float) and time_spent_ms.is_integer():
            time_spent_ms = int(time_spent_ms)
        if isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int):
            errors["time_spent_ms"] = ["A valid integer is required."]
        elif time_spent_ms < 0:
            errors["time_spent_ms"] = ["Ensure this value is greater than or equal to 0."]
    if errors:
        raise ValidationError(errors)
    return {
        "ordering": data["ordering"], "client_uuid": client_uuid, "flags": flags,
        "rationale": rationale.strip(), "time_spent_ms": time_spent_ms,
    }


def ranking_payload(ranking) -> dict:
    """What ``RankingSerializer`` gives for ``ranking``, built directly (it answers every submit)."""
    created = ranking.created_at.isoformat()
    if created.endswith("+00:00"):
        created = created[:-6] + "Z"
    return {
        "id": ranking.pk, "task": ranking.task_id, "ordering": ranking.ordering, "flags": ranking.flags,
        "rationale": ranking.rationale, "time_spent_ms": ranking.time_spent_ms,
        "client_uuid": str(ranking.client_uuid), "created_at": created,
    }


class SkipSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class UpcomingImageSerializer(serializers.Serializer):
    task_id = serializers.IntegerField()
    image_url = serializers.CharField()


class ProgressSerializer(serializers.Serializer):
    done_today = serializers.IntegerField(help_text="Your rankings in this project since midnight UTC.")
    done_total = serializers.IntegerField(help_text="All your rankings in this project.")
    open_in_queue = serializers.IntegerField(help_text="Tasks of the project still open.")


class UpcomingSerializer(serializers.Serializer):
    """What a client reads while the annotator works: whose images to load ahead, and fresh figures."""

    upcoming = UpcomingImageSerializer(many=True, help_text="The tasks the queue would most likely hand you next "
                                       "(a guess: nothing is leased), best first.")
    progress = ProgressSerializer()


class NextTaskAnswerSerializer(serializers.Serializer):
    next_task = TaskSerializer(allow_null=True, help_text="Your next task, leased; null when the queue is empty.")
    paused = serializers.CharField(required=False, help_text="Only when you are paused: why (no new tasks until a "
                                   "project admin re-admits you).")


class RankingSerializer(serializers.Serializer):
    """A stored ranking. Fields spelled out rather than a ModelSerializer: this answers every submit, and
    a ModelSerializer introspects the model on each instantiation."""

    id = serializers.IntegerField(read_only=True)
    task = serializers.IntegerField(source="task_id", read_only=True)
    ordering = serializers.JSONField(read_only=True)
    flags = serializers.ListField(child=serializers.CharField(), read_only=True)
    rationale = serializers.CharField(read_only=True)
    time_spent_ms = serializers.IntegerField(read_only=True, allow_null=True)
    client_uuid = serializers.UUIDField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class OrderedCandidateSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()


class ReviewRankingSerializer(RankingSerializer):
    """A ranking as a reviewer reads it: who ranked what, the ordering with the candidates' texts (groups
    of tied candidates, best first), and its review."""

    annotator = serializers.CharField(source="annotator.username", read_only=True)
    prompt = serializers.CharField(source="task.prompt.text", read_only=True)
    image_url = serializers.SerializerMethodField()
    ordered_candidates = serializers.ListField(
        child=OrderedCandidateSerializer(many=True), read_only=True,
        help_text="The ordering with each candidate's text: groups of tied candidates, best first.",
    )
    review = serializers.ChoiceField(choices=Ranking.Review.choices, read_only=True)
    reviewed_by = serializers.CharField(source="reviewed_by.username", read_only=True, allow_null=True, default=None)
    reviewed_at = serializers.DateTimeField(read_only=True, allow_null=True)
    review_note = serializers.CharField(read_only=True)

    def get_image_url(self, ranking) -> str:
        return reverse("api-image", args=[self.context["project"].slug, ranking.task.prompt.image_id])


class RankingListQuerySerializer(serializers.Serializer):
    review = serializers.ChoiceField(choices=Ranking.Review.values, required=False,
                                     help_text="Only rankings in this review state.")


class ReviewSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["accept", "reject"])
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_NOTE)


class ImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A zip holding manifest.jsonl or manifest.csv and the images.")
    mode = serializers.ChoiceField(choices=MODES, default="all_or_nothing")
    manifest = serializers.CharField(required=False, allow_blank=True, default="",
                                     help_text="The manifest's name; for another format, its main source file.")
    format = serializers.ChoiceField(choices=IMPORT_FORMATS, default="manifest",
                                     help_text="manifest, or a standard dataset: coco, karpathy, vqa, refcoco, hf.")
    split = serializers.CharField(required=False, allow_blank=True, default="",
                                  help_text="The source's splits to take, comma-separated (e.g. val2017).")
    limit = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    heldout = serializers.ChoiceField(choices=HELDOUT, default="source",
                                      help_text="source: the dataset's val/test records are held out; hash: the "
                                                "project's held-out fraction chooses.")

    def validate(self, attrs):
        if attrs["split"] and attrs["format"] == "manifest":
            raise serializers.ValidationError({"split": "only for a standard dataset format"})
        return attrs


class ExportQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=FORMATS, default="records")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    source = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    split = serializers.ChoiceField(choices=["train", "eval"], required=False,
                                    help_text="Only the pairs (rankings) of training or of held-out prompts.")
    min_confidence = serializers.FloatField(
        required=False, min_value=0, max_value=1,
        help_text="0–1: only pairs whose confidence (Crowd-BT posterior that chosen truly beats rejected) is at "
                  "least this; rankings: whose consensus is. Pairs without one yet (null) are left out.",
    )
    min_annotator_reliability = serializers.FloatField(
        required=False, min_value=0, max_value=1,
        help_text="0–1: only pairs (rankings) of annotators whose reliability (Crowd-BT η, the probability they "
                  "order a pair correctly) in the stored quality report is at least this; annotators without "
                  "a figure are left out.",
    )


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=get_user_model().objects.all()
    )

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]
        read_only_fields = ["created_at"]


class SubmitAnswerSerializer(RankingSerializer):
    """The stored ranking; with ``?next=1`` also your next task."""

    next_task = TaskSerializer(
        read_only=True, allow_null=True, required=False,
        help_text="Only with `?next=1`: your next task, leased; null when the queue is empty.",
    )
    paused = serializers.CharField(required=False, help_text="Only with `?next=1` when you are paused: why.")


class QualityReportSerializer(serializers.Serializer):
    """A project's stored agreement and reliability figures (``annotation.services.quality``)."""

    stale = serializers.BooleanField(help_text="Rankings came or left since; a recompute is under way.")
    computed_at = serializers.DateTimeField()
    rankings = serializers.IntegerField(help_text="Rankings (not rejected) the figures were computed on.")
    project = serializers.JSONField(help_text="tasks, pairwise, pairwise_ci, alpha, alpha_ci, agree, disagree, n_boot")
    annotators = serializers.JSONField(
        help_text="Per user id: username, rankings, tasks, agreement, agreement_ci, agreement_n, reliability, pairs"
    )


class QualityComputingSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='"computing"')
