"""Role checks for the API: project members work in the queue; project admins import, export and
manage members. Anonymous users get 401 (token auth answers with a challenge), outsiders 403."""

from annotation.models import Project
from annotation.permissions import project_and_role


def project_for(request, slug: str, *, admin: bool = False) -> Project:
    return project_and_role(request.user, slug, admin=admin)[0]
