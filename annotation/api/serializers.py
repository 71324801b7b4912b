"""Input validation and output shapes of the annotation API."""

from django.contrib.auth import get_user_model
from rest_framework import serializers

from annotation.models import Membership, Project
from annotation.services.exports import FORMATS
from annotation.services.imports import MODES


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = [
            "id", "name", "slug", "task_type", "instructions", "candidates_per_task", "overlap",
            "lease_minutes", "base_model", "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"slug": {"required": False}}


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


class SubmitSerializer(serializers.Serializer):
    ordering = serializers.JSONField(help_text="Groups of candidate ids, best first; ties share a group.")
    client_uuid = serializers.UUIDField(help_text="Fresh per ranking; a repeat with the same id is a no-op.")
    flags = serializers.ListField(
        child=serializers.ChoiceField(choices=["all_bad", "unsafe", "image_unclear"]), required=False, default=list
    )
    rationale = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    time_spent_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0, default=None)


class SkipSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


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


class ImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A zip holding manifest.jsonl or manifest.csv and the images.")
    mode = serializers.ChoiceField(choices=MODES, default="all_or_nothing")
    manifest = serializers.CharField(required=False, allow_blank=True, default="")


class ExportQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=FORMATS, default="records")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    source = serializers.ListField(child=serializers.CharField(), required=False, default=list)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=get_user_model().objects.all()
    )

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]
        read_only_fields = ["created_at"]
