"""Role checks for the API: project members work in the queue; project admins import, export and
manage members. Anonymous users get 401 (token auth answers with a challenge), outsiders 403."""

from django.core.exceptions import PermissionDenied
from rest_framework.exceptions import NotFound

from annotation.models import Project, Ranking
from annotation.permissions import project_and_role
from annotation.selectors import role_in


def project_for(request, slug: str, *, admin: bool = False) -> Project:
    return project_and_role(request.user, slug, admin=admin)[0]


def ranking_project_for(request, ranking_id: int) -> Project:
    """The project that holds ranking ``ranking_id``, for one of its admins: 404 if there is no such ranking
    or it is in a project the user is not a member of (its existence is not told), 403 for its annotators."""
    project_id = Ranking.objects.filter(pk=ranking_id).values_list("project_id", flat=True).first()
    slug = Project.objects.filter(pk=project_id).values_list("slug", flat=True).first()
    if slug is None:
        raise NotFound(f"no ranking {ranking_id}")
    try:
        return project_and_role(request.user, slug, admin=True)[0]
    except PermissionDenied:
        if role_in(request.user, Project(pk=project_id)) is None:
            raise NotFound(f"no ranking {ranking_id}") from None
        raise
