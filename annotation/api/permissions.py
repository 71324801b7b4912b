"""Role checks for the API: project members work in the queue; project admins import, export and
manage members. Anonymous users get 401 (token auth answers with a challenge), outsiders 403."""

from django.shortcuts import get_object_or_404
from rest_framework.exceptions import PermissionDenied

from annotation.models import Membership, Project
from annotation.selectors import role_in


def project_for(request, slug: str, *, admin: bool = False) -> Project:
    project = get_object_or_404(Project, slug=slug)
    role = role_in(request.user, project)
    if role is None:
        raise PermissionDenied(f"you are not a member of project {slug}")
    if admin and role != Membership.Role.ADMIN:
        raise PermissionDenied(f"only project admins of {slug} may do this")
    return project
