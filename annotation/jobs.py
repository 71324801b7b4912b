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
