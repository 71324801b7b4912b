"""The gold-task API: mark and unmark gold tasks, promote an accepted ranking, read annotators' gold
accuracy, re-admit a paused annotator. Project admins only (``annotation.services.gold``)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.permissions import project_for, ranking_project_for
from annotation.permissions import task_project_and_role
from annotation.services import gold


class GoldOrderingSerializer(serializers.Serializer):
    ordering = serializers.JSONField(help_text="The known order: groups of the task's candidate ids, best first, "
                                     "e.g. [[3], [1, 2], [4]] (ties share a group).")


class GoldTaskSerializer(serializers.Serializer):
    task_id = serializers.IntegerField(source="pk")
    state = serializers.CharField()
    gold_ordering = serializers.JSONField(allow_null=True)


ERRORS = {
    400: OpenApiResponse(description="The ordering is not exactly the task's candidates, or orders none strictly"),
    403: OpenApiResponse(description="Not an admin of the task's project"),
    404: OpenApiResponse(description="No such task"),
}


class TaskGoldView(APIView):
    @extend_schema(request=GoldOrderingSerializer, responses={200: GoldTaskSerializer, **ERRORS})
    def post(self, request, task_id):
        """Make the task a gold task with a known ordering: the queue mixes it into every annotator's stream
        (``gold_rate``) and scores their rankings against it."""
        project, _ = task_project_and_role(request.user, task_id)
        data = GoldOrderingSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = gold.task_mark_gold(project=project, task_id=task_id, user=request.user, **data.validated_data)
        return Response(GoldTaskSerializer(task).data)

    @extend_schema(request=None, responses={200: GoldTaskSerializer, **ERRORS})
    def delete(self, request, task_id):
        """Make a gold task an ordinary one again."""
        project, _ = task_project_and_role(request.user, task_id)
        task = gold.task_unmark_gold(project=project, task_id=task_id, user=request.user)
        return Response(GoldTaskSerializer(task).data)


class RankingGoldView(APIView):
    @extend_schema(request=None, responses={200: GoldTaskSerializer, **ERRORS})
    def post(self, request, ranking_id):
        """Promote an accepted ranking: its ordering becomes its task's gold ordering."""
        project = ranking_project_for(request, ranking_id)
        task = gold.task_gold_from_ranking(project=project, ranking_id=ranking_id, user=request.user)
        return Response(GoldTaskSerializer(task).data)


class GoldReportView(APIView):
    @extend_schema(responses={200: OpenApiResponse(description="gold_tasks, settings, annotators: user_id, username, "
                                                   "tasks, agree, pairs, accuracy, ci, verdict, warned, paused, …")})
    def get(self, request, slug):
        """Each annotator's gold accuracy (pairs of the gold orderings ordered the same way, with Wilson's 95 %
        interval) since their last re-admission, and whether they are warned or paused."""
        project = project_for(request, slug, admin=True)
        return Response(gold.gold_report(project))


class ReadmitView(APIView):
    @extend_schema(request=None, responses={200: OpenApiResponse(description="The annotator may take tasks again"),
                                            404: OpenApiResponse(description="Not a member")})
    def post(self, request, slug, user_id):
        """Re-admit a paused annotator; their gold accuracy counts afresh from now."""
        project = project_for(request, slug, admin=True)
        m = gold.annotator_readmit(project=project, user=request.user, annotator_id=user_id)
        return Response({"user_id": m.user_id, "paused": False, "since": m.gold_since})
