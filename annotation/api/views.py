"""The annotation REST API. Views validate, check the role, call one service, serialize."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.http import FileResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.permissions import project_for, ranking_project_for
from annotation.api.serializers import (
    ExportQuerySerializer,
    MembershipSerializer,
    NextTaskAnswerSerializer,
    ProjectSerializer,
    QualityComputingSerializer,
    QualityReportSerializer,
    RankingListQuerySerializer,
    ReviewRankingSerializer,
    ReviewSerializer,
    SkipSerializer,
    SubmitAnswerSerializer,
    SubmitSerializer,
    TaskSerializer,
    UpcomingSerializer,
    parse_submit,
    ranking_payload,
)
from annotation.images import open_media
from annotation.models import Image, Membership, Project
from annotation.permissions import project_and_role, task_project_and_role
from annotation.selectors import (
    annotator_progress,
    image_in_project,
    projects_for,
    queue_stats,
    task_payload,
)
from annotation.services import exports, gold, projects, quality, queue, reviews
from annotation.ui_selectors import upcoming_images
from lensloop import storage

NEXT = OpenApiParameter("next", bool, description="Also lease and return your next task, as `next_task`")


def _wants_next(request) -> bool:
    return request.query_params.get("next") in ("1", "true")


def _next_task_payload(request, project: Project) -> dict | None:
    """The annotator's next task, leased (their own unexpired lease first); None when the queue is empty."""
    assignment = queue.next_task(annotator=request.user, project=project)
    return task_payload(assignment) if assignment is not None else None


def _with_next(request, project: Project, body: dict) -> dict:
    """``body`` with ``next_task``; when there is none because the annotator is paused, ``paused`` says why."""
    body["next_task"] = _next_task_payload(request, project)
    if body["next_task"] is None:
        reason = gold.paused_reason(request.user, project)
        if reason:
            body["paused"] = reason
    return body


class ProjectListView(generics.ListCreateAPIView):
    serializer_class = ProjectSerializer

    def get_queryset(self):
        return projects_for(self.request.user).order_by("id")

    def perform_create(self, serializer):
        if not self.request.user.is_staff:
            raise PermissionDenied("only staff users may create projects")
        serializer.instance = projects.project_create(created_by=self.request.user, **serializer.validated_data)


class ProjectDetailView(APIView):
    @extend_schema(responses=ProjectSerializer)
    def get(self, request, slug):
        project = project_for(request, slug)
        return Response(ProjectSerializer(project).data)

    @extend_schema(request=ProjectSerializer, responses=ProjectSerializer)
    def patch(self, request, slug):
        project = project_for(request, slug, admin=True)
        serializer = ProjectSerializer(project, data=request.data, partial=True, context={"request": request})
        serializer.is_valid(raise_exception=True)
        project = projects.project_update(project=project, user=request.user, **serializer.validated_data)
        return Response(ProjectSerializer(project).data)


class ProjectStatsView(APIView):
    @extend_schema(responses={200: OpenApiResponse(description="Queue and progress figures")})
    def get(self, request, slug):
        project = project_for(request, slug)
        return Response({"queue": queue_stats(project), "me": annotator_progress(request.user, project)})


class NextTaskView(APIView):
    @extend_schema(request=None, responses={
        200: TaskSerializer, 204: OpenApiResponse(description="Queue empty"),
        403: OpenApiResponse(description="You are paused (gold accuracy below the project's threshold); `detail` says why"),
    })
    def post(self, request, slug):
        """Your current task in this project, or a new lease on the best open one."""
        project = project_for(request, slug)
        task = _next_task_payload(request, project)
        if task is None:
            reason = gold.paused_reason(request.user, project)
            if reason:
                raise gold.Paused(f"you are paused in {project.slug}: {reason}; a project admin can re-admit you")
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(task)


class UpcomingView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("task", int, description="The task you are working on (left out of the guess)")],
        responses=UpcomingSerializer,
    )
    def get(self, request, slug):
        """The images of the tasks the queue would most likely hand you next, and your progress figures.
        A read that leases nothing: a client loads those images while the annotator works, so the next
        task shows at once when it comes (a guess: under contention another annotator may take them)."""
        project = project_for(request, slug)
        current = request.query_params.get("task", "")
        upcoming = upcoming_images(
            annotator=request.user, project=project, exclude_task_id=int(current) if current.isdigit() else None
        )
        return Response({"upcoming": upcoming, "progress": annotator_progress(request.user, project)})


def _check_task_member(request, task_id: int) -> Project:
    """404 for a task that does not exist, 403 unless the user is a member of its project."""
    return task_project_and_role(request.user, task_id)[0]


class SubmitView(APIView):
    @extend_schema(
        request=SubmitSerializer,
        parameters=[NEXT],
        responses={
            201: SubmitAnswerSerializer,
            200: OpenApiResponse(SubmitAnswerSerializer, description="Repeat of an earlier submit (same client_uuid)"),
            400: OpenApiResponse(description="The ordering does not cover exactly the task's candidates"),
            409: OpenApiResponse(description="Lease lost: the task went to someone else; nothing was saved"),
        },
    )
    def post(self, request, task_id):
        """Store a ranking (idempotent on client_uuid). With `?next=1` the answer also carries your next
        task as `next_task` (null when the queue is empty): one request per annotation instead of two."""
        project = _check_task_member(request, task_id)
        result = queue.submit_ranking(annotator=request.user, task_id=task_id, **parse_submit(request.data))
        body = ranking_payload(result.ranking)
        if _wants_next(request):
            _with_next(request, project, body)
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class SkipView(APIView):
    @extend_schema(
        request=SkipSerializer,
        parameters=[NEXT],
        responses={
            204: None,
            200: OpenApiResponse(NextTaskAnswerSerializer, description="With `?next=1`: your next task"),
            409: OpenApiResponse(description="Not yours"),
        },
    )
    def post(self, request, task_id):
        """Hand the task back for good: you will not get it again. With `?next=1` the answer carries your
        next task as `next_task` (null when the queue is empty)."""
        project = _check_task_member(request, task_id)
        data = SkipSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        queue.skip_task(annotator=request.user, task_id=task_id, reason=data.validated_data["reason"])
        if _wants_next(request):
            return Response(_with_next(request, project, {}))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReleaseView(APIView):
    @extend_schema(request=None, responses={204: None, 409: OpenApiResponse(description="Not yours")})
    def post(self, request, task_id):
        _check_task_member(request, task_id)
        queue.release_task(annotator=request.user, task_id=task_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RankingListView(generics.ListAPIView):
    """Your rankings in the project, newest first; project admins see everyone's, to review them. Each
    carries its annotator, the ordering with the candidates' texts and its review state; `?review=`
    keeps one state (`pending`, `accepted`, `rejected`)."""

    serializer_class = ReviewRankingSerializer

    @extend_schema(parameters=[RankingListQuerySerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        self.project, role = project_and_role(self.request.user, self.kwargs["slug"])
        query = RankingListQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        qs = reviews.rankings_for_review(self.project, review=query.validated_data.get("review"))
        return qs if role == Membership.Role.ADMIN else qs.filter(annotator=self.request.user)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "project": getattr(self, "project", None)}

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        data = self.get_serializer(reviews.with_candidates(page), many=True).data
        return self.get_paginated_response(data)


class RankingReviewView(APIView):
    @extend_schema(
        request=ReviewSerializer,
        responses={
            200: ReviewRankingSerializer,
            400: OpenApiResponse(description="Unknown decision, or a note that is too long"),
            403: OpenApiResponse(description="Not an admin of the ranking's project"),
            404: OpenApiResponse(description="No such ranking, or one of a project you are not a member of"),
        },
    )
    def post(self, request, ranking_id):
        """Accept or reject a ranking (project admins). A rejected ranking's pairs leave every export and so
        every later training round; accepting it again brings them back."""
        project = ranking_project_for(request, ranking_id)
        data = ReviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ranking = reviews.ranking_review(ranking_id=ranking_id, project=project, reviewer=request.user,
                                         **data.validated_data)
        ranking = reviews.with_candidates(reviews.rankings_for_review(project).filter(pk=ranking.pk))[0]
        return Response(ReviewRankingSerializer(ranking, context={"project": project}).data)


class ImageView(APIView):
    @extend_schema(responses={(200, "image/*"): bytes})
    def get(self, request, slug, image_id):
        project = project_for(request, slug)
        if not image_in_project(project, image_id):
            raise PermissionDenied("this image is not part of the project")
        image = get_object_or_404(Image, pk=image_id)
        response = FileResponse(open_media(image.file), content_type=f"image/{image.format.lower()}")
        response["Cache-Control"] = "private, max-age=86400, immutable"
        return response


class ExportView(APIView):
    @extend_schema(
        parameters=[ExportQuerySerializer],
        responses={(200, "application/zip"): bytes},
    )
    def get(self, request, slug):
        """Stream an export as a zip with its dataset card (README.md): records/trl/rankings (JSONL + images/),
        parquet (data/train-0000i-of-0000N.parquet), hf (a save_to_disk folder: train/ and test/). Header
        ``X-Lensloop-Quality``: ``fresh``, ``stale`` or ``missing`` — whether the pairs' confidence and agreement
        (and what the quality filters keep) are current; ``X-Lensloop-Quality-Note`` says what that means."""
        project = project_for(request, slug, admin=True)
        # Blank fields (an empty form input) mean "no filter", not "invalid date".
        params = {key: value for key, value in request.query_params.dict().items() if value != ""}
        query = ExportQuerySerializer(data={**params, "source": [s for s in request.query_params.getlist("source") if s]})
        query.is_valid(raise_exception=True)
        q = query.validated_data
        flt = exports.ExportFilter(
            project=project, since=q.get("since"), until=q.get("until"), sources=tuple(q.get("source") or ()),
            split=q.get("split"), min_confidence=q.get("min_confidence"),
            min_annotator_reliability=q.get("min_annotator_reliability"),
        )
        # Whether the confidences it carries (and its quality filters read) are current: a header, since the
        # body is the download. A stale or missing report is recomputed by a worker, as the quality view does.
        note = exports.quality_note(flt)
        if note.state != "fresh":
            quality.enqueue_quality_report(project)
        chunks, filename, content_type = exports.stream_export(flt, q["format"])
        store = storage.config()
        if store is not None:  # into the bucket, and the client downloads it from there
            response = HttpResponseRedirect(exports.store_export(store, chunks, filename, project))
        else:
            response = StreamingHttpResponse(chunks, content_type=content_type)
            response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["X-Lensloop-Quality"] = note.state
        if note.computed_at is not None:
            response["X-Lensloop-Quality-Computed-At"] = note.computed_at.isoformat()
        if note.message:
            response["X-Lensloop-Quality-Note"] = note.message
        return response


class QualityView(APIView):
    @extend_schema(
        responses={
            200: QualityReportSerializer,
            202: OpenApiResponse(QualityComputingSerializer, description="No report yet: it is being computed"),
        }
    )
    def get(self, request, slug):
        """The project's agreement and annotator reliability, as last computed in the background. A stale or
        missing report is recomputed by a worker (never in the request); poll again."""
        project = project_for(request, slug, admin=True)
        state = quality.quality_report_for(project)
        if state.stale:
            quality.enqueue_quality_report(project)
        if state.report is None:
            return Response({"status": "computing"}, status=status.HTTP_202_ACCEPTED)
        report = state.report
        return Response(QualityReportSerializer({
            "stale": state.stale, "computed_at": report.computed_at, "rankings": report.rankings,
            "project": report.data.get("project", {}), "annotators": report.data.get("annotators", {}),
        }).data)


class MemberListView(APIView):
    @extend_schema(responses=MembershipSerializer(many=True))
    def get(self, request, slug):
        project = project_for(request, slug, admin=True)
        members = Membership.objects.filter(project=project).select_related("user").order_by("user__username")
        return Response(MembershipSerializer(members, many=True).data)

    @extend_schema(request=MembershipSerializer, responses={201: MembershipSerializer})
    def post(self, request, slug):
        project = project_for(request, slug, admin=True)
        data = MembershipSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = projects.member_set(
            project=project, user=data.validated_data["user"], role=data.validated_data["role"]
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    @extend_schema(request=None, responses={204: None})
    def delete(self, request, slug, username):
        project = project_for(request, slug, admin=True)
        user = get_object_or_404(get_user_model(), username=username)
        if not projects.member_remove(project=project, user=user):
            return Response({"error": "not_found", "detail": f"{username} is not a member"}, status=404)
        return Response(status=status.HTTP_204_NO_CONTENT)

