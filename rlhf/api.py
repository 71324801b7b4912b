"""REST API of the loop: rounds, standalone generate runs, run status, cancel, resume, versions,
and the leaderboard of versions from human rankings. Project admins launch and cancel; members read."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.permissions import project_for
from rlhf.engine import round as round_schema
from rlhf.gate import decide_pending_gates
from rlhf.leaderboard import leaderboard
from rlhf.models import LoopSettings, ModelVersion, TrainingRun
from rlhf.services import (
    LoopError,
    activate_version,
    cancel_run,
    loop_settings_set,
    reap_stale_runs,
    resume_round,
    start_generate,
    start_round,
)


class RunSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)
    status = serializers.CharField(read_only=True, help_text="The sentence under the progress bar (TrainingRun.status_text).")
    versions = serializers.SlugRelatedField(many=True, read_only=True, slug_field="label")

    class Meta:
        model = TrainingRun
        fields = [
            "id", "kind", "state", "round", "position", "config", "step", "total_steps", "progress", "status", "result",
            "error", "snapshot", "versions", "created_at", "started_at", "finished_at",
        ]


class RunDetailSerializer(RunSerializer):
    steps = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "metrics", "log_tail", "steps"]

    @extend_schema_field(RunSerializer(many=True))
    def get_steps(self, run):
        return RunSerializer(run.steps.order_by("position").prefetch_related("versions"), many=True).data


class VersionSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(read_only=True, slug_field="label")
    reward_model = serializers.SlugRelatedField(read_only=True, slug_field="label")

    class Meta:
        model = ModelVersion
        fields = ["id", "label", "kind", "active", "parent", "reward_model", "base_model", "path", "weights", "metrics", "run",
                  "gate_state", "gate_reason", "gate", "created_at"]


def _serializer_field(f) -> serializers.Field:
    """The API field of a round parameter, from the round schema (``rlhf.engine.round``); every one may be
    left out (the project's saved settings, else the defaults, apply)."""
    meta, hint = f.metadata, round_schema.hint(f.name)
    common = {"required": False, "help_text": meta["help"]}
    if "choices" in meta:
        return serializers.ChoiceField(choices=list(meta["choices"]), **common)
    if hint is bool:
        return serializers.BooleanField(**common)
    if hint is str:
        return serializers.CharField(allow_blank=True, **common)
    if hint == list[str]:
        return serializers.ListField(child=serializers.CharField(), **common)
    if hint == list[dict]:  # the composed reward: its terms are checked by the engine's rules, naming the term
        return serializers.JSONField(**common)
    bounds = {"min_value": meta.get("min"), "max_value": meta.get("max")}
    return (serializers.IntegerField if hint is int else serializers.FloatField)(**bounds, **common)


RoundSerializer = type("RoundSerializer", (serializers.Serializer,),
                       {f.name: _serializer_field(f) for f in round_schema.fields()} |
                       {"__doc__": "The parameters of a round (rlhf.engine.round.RoundConfig)."})


class RoundView(APIView):
    @extend_schema(request=RoundSerializer, responses={201: RunDetailSerializer, 409: OpenApiResponse(description="A round is in progress")})
    def post(self, request, slug):
        """Start a round: export → reward model → policy → evaluate → register → generate."""
        project = project_for(request, slug, admin=True)
        data = RoundSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = start_round(project=project, user=request.user, params=dict(data.validated_data))
        return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


class GenerateSerializer(serializers.Serializer):
    prompts = serializers.IntegerField(min_value=1, required=False, help_text="How many train prompts.")
    compare = serializers.ListField(
        child=serializers.CharField(), min_length=2, max_length=2, required=False,
        help_text="Two policy version labels: every task then mixes candidates of both.",
    )


class GenerateView(APIView):
    @extend_schema(request=GenerateSerializer, responses={201: RunSerializer})
    def post(self, request, slug):
        """Sample K candidates per train prompt from the active policy (or two versions, mixed) as new tasks."""
        project = project_for(request, slug, admin=True)
        data = GenerateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = start_generate(project=project, user=request.user, **data.validated_data)
        return Response(RunSerializer(run).data, status=201)


class RunListView(APIView):
    @extend_schema(responses=RunSerializer(many=True))
    def get(self, request, slug):
        project = project_for(request, slug)
        reap_stale_runs()
        runs = TrainingRun.objects.filter(project=project, round__isnull=True).prefetch_related("versions")[:100]
        return Response(RunSerializer(runs, many=True).data)


def _run_for(request, run_id: int, *, admin: bool = False) -> TrainingRun:
    run = get_object_or_404(TrainingRun.objects.select_related("project"), pk=run_id)
    project_for(request, run.project.slug, admin=admin)
    return run


class RunDetailView(APIView):
    @extend_schema(responses=RunDetailSerializer)
    def get(self, request, run_id):
        reap_stale_runs()
        return Response(RunDetailSerializer(_run_for(request, run_id)).data)


class RunCancelView(APIView):
    @extend_schema(request=None, responses=RunDetailSerializer)
    def post(self, request, run_id):
        run = cancel_run(_run_for(request, run_id, admin=True))
        return Response(RunDetailSerializer(run).data)


class RunResumeView(APIView):
    @extend_schema(request=None, responses=RunDetailSerializer)
    def post(self, request, run_id):
        run = resume_round(_run_for(request, run_id, admin=True))
        return Response(RunDetailSerializer(run).data)


class VersionListView(APIView):
    @extend_schema(responses=VersionSerializer(many=True))
    def get(self, request, slug):
        project = project_for(request, slug)
        decide_pending_gates(project)
        versions = ModelVersion.objects.filter(project=project).select_related("parent", "reward_model")
        return Response(VersionSerializer(versions, many=True).data)


class VersionActivateView(APIView):
    @extend_schema(request=None, responses=VersionSerializer)
    def post(self, request, version_id):
        """Make this version the active one of its kind (a rollback, or back to a better policy): the next
        round continues from it and new tasks are sampled from it. 409 while a round is in progress."""
        version = get_object_or_404(ModelVersion.objects.select_related("project"), pk=version_id)
        project_for(request, version.project.slug, admin=True)
        version = activate_version(version)
        return Response(VersionSerializer(version).data)


class LeaderboardView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("split", str, enum=["train", "eval"], required=False,
                                     description="Only the pairs of held-out (eval) or training prompts.")],
        responses={200: OpenApiResponse(description="Versions by Bradley–Terry rating with 95% CIs")},
    )
    def get(self, request, slug):
        project = project_for(request, slug)
        split = request.query_params.get("split") or None
        if split not in (None, "train", "eval"):
            raise LoopError("split must be train or eval")
        return Response(leaderboard(project, split=split))


class LoopSettingsSerializer(serializers.Serializer):
    auto_round_pairs = serializers.IntegerField(min_value=0, required=False,
                                                help_text="Start a round every N new preference pairs (0 = off).")
    round_params = serializers.DictField(required=False, help_text="Parameters of automatic rounds and the "
                                         "project's engine settings (ROUND_ADVANCED), which every round uses.")
    promotion_gate = serializers.ChoiceField(choices=LoopSettings.PromotionGate.values, required=False,
                                             help_text="auto, human or off (docs/loop.md, the promotion gate).")
    gate_reward = serializers.CharField(allow_blank=True, required=False,
                                        help_text="Verifiable reward of the gate; empty = the round's.")
    gate_comparisons = serializers.IntegerField(min_value=1, required=False,
                                                help_text="Side-by-side rankings the human gate waits for.")
    eval_prompts = serializers.IntegerField(min_value=0, required=False,
                                            help_text="Held-out prompts each round evaluates on (0 = all).")


def _loop_settings_out(row: LoopSettings | None) -> dict:
    row = row or LoopSettings()
    return {"auto_round_pairs": row.auto_round_pairs, "round_params": row.round_params,
            "promotion_gate": row.promotion_gate, "gate_reward": row.gate_reward,
            "gate_comparisons": row.gate_comparisons, "eval_prompts": row.eval_prompts}


class LoopSettingsView(APIView):
    @extend_schema(responses=LoopSettingsSerializer)
    def get(self, request, slug):
        project = project_for(request, slug)
        return Response(_loop_settings_out(LoopSettings.objects.filter(project=project).first()))

    @extend_schema(request=LoopSettingsSerializer, responses=LoopSettingsSerializer)
    def patch(self, request, slug):
        """Change the automatic-round trigger, some of the saved round parameters (validated like a round's;
        those not named keep their saved values), and/or the held-out evaluation and promotion gate."""
        project = project_for(request, slug, admin=True)
        data = LoopSettingsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = loop_settings_set(project=project, **data.validated_data)
        return Response(_loop_settings_out(row))


urlpatterns = [
    path("projects/<slug:slug>/loop-settings/", LoopSettingsView.as_view(), name="api-loop-settings"),
    path("projects/<slug:slug>/rounds/", RoundView.as_view(), name="api-rounds"),
    path("projects/<slug:slug>/generate/", GenerateView.as_view(), name="api-generate"),
    path("projects/<slug:slug>/runs/", RunListView.as_view(), name="api-runs"),
    path("projects/<slug:slug>/versions/", VersionListView.as_view(), name="api-versions"),
    path("projects/<slug:slug>/leaderboard/", LeaderboardView.as_view(), name="api-leaderboard"),
    path("versions/<int:version_id>/activate/", VersionActivateView.as_view(), name="api-version-activate"),
    path("runs/<int:run_id>/", RunDetailView.as_view(), name="api-run"),
    path("runs/<int:run_id>/cancel/", RunCancelView.as_view(), name="api-run-cancel"),
    path("runs/<int:run_id>/resume/", RunResumeView.as_view(), name="api-run-resume"),
]
