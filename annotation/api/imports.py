"""The import endpoints: upload a bundle (202 with the import's URL), follow it, cancel it.

An import runs in a worker (``annotation.services.import_jobs``), never in the request that uploaded it.
"""

from __future__ import annotations

import zipfile

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.permissions import project_for
from annotation.api.serializers import ImportSerializer
from annotation.models import ImportJob
from annotation.services import import_jobs


def import_payload(job: ImportJob) -> dict:
    """What the API and the import page show of an import."""
    slug = job.project.slug
    return {
        "id": job.pk,
        "url": reverse("api-import-detail", args=[slug, job.pk]),
        "page": reverse("project-import-detail", args=[slug, job.pk]),
        "cancel_url": reverse("api-import-cancel", args=[slug, job.pk]),
        "state": job.state,
        "filename": job.filename,
        "size_bytes": job.size_bytes,
        "options": job.options,
        "progress": job.progress,
        "report": job.report,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _job(request, slug: str, import_id: int) -> ImportJob:
    project = project_for(request, slug, admin=True)
    import_jobs.reap_lost_imports(project)
    return get_object_or_404(ImportJob.objects.select_related("project"), pk=import_id, project=project)


class ImportView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": ImportSerializer},
        responses={
            202: OpenApiResponse(description="Queued: the import's state, progress and (at the end) report are at "
                                             "`url` (also in the Location header)"),
            400: OpenApiResponse(description="The upload is not a zip, too large, or an option is invalid"),
        },
    )
    def post(self, request, slug):
        project = project_for(request, slug, admin=True)
        data = ImportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > settings.LENSLOOP_MAX_UPLOAD_BYTES:
            return Response(
                {"error": "too_large", "detail": f"upload is over {settings.LENSLOOP_MAX_UPLOAD_BYTES:,} bytes"},
                status=status.HTTP_400_BAD_REQUEST,
            )
        # The one check the request makes itself (it reads only the zip's last bytes): everything else is
        # the worker's, which reports it with file and line.
        if not zipfile.is_zipfile(upload):
            return Response({"error": "not_a_zip", "detail": f"{upload.name}: not a zip file; upload a .zip holding "
                             "a manifest and images"}, status=status.HTTP_400_BAD_REQUEST)
        upload.seek(0)
        job = import_jobs.import_job_create(project=project, user=request.user, upload=upload, filename=upload.name,
                                            options=data.validated_data)
        body = import_payload(job)
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class ImportDetailView(APIView):
    @extend_schema(responses={200: OpenApiResponse(description="The import: state (queued, running, succeeded, "
                                                               "rejected, failed, cancelled), progress, report")})
    def get(self, request, slug, import_id):
        return Response(import_payload(_job(request, slug, import_id)))


class ImportCancelView(APIView):
    @extend_schema(request=None, responses={200: OpenApiResponse(description="The import, cancelled or asked to stop")})
    def post(self, request, slug, import_id):
        job = import_jobs.import_job_cancel(job=_job(request, slug, import_id))
        return Response(import_payload(job))
