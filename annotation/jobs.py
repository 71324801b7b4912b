"""Background jobs of the annotation app (thin: take ids, call a service)."""

from annotation.models import Project
from annotation.services.queue import expire_leases


def expire_leases_job(project_id: int | None = None) -> int:
    """Return expired leases to the queue; ``next_task`` does this too, this keeps idle queues tidy."""
    project = Project.objects.filter(pk=project_id).first() if project_id is not None else None
    if project_id is not None and project is None:
        return 0  # the project is gone: nothing to do
    total = 0
    while expired := expire_leases(project=project):
        total += expired
    return total


def quality_report_job(project_id: int) -> int | None:
    """Recompute the project's agreement and reliability (``annotation.services.quality``); its report's id."""
    from annotation.services.quality import quality_report_compute

    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None  # the project is gone: nothing to do
    return quality_report_compute(project=project).pk


def import_job(import_id: int) -> str:
    """Run a queued import (``annotation.services.import_jobs``); the state it ended in."""
    from annotation.services.import_jobs import import_job_run

    return import_job_run(import_id)
