"""Who may act in a project: one check for the pages, the API and the training pages."""

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from annotation.models import Membership, Project
from annotation.selectors import role_in


def project_and_role(user, slug: str, *, admin: bool = False) -> tuple[Project, str]:
    """The project and the user's role in it; 404 if there is no such project, 403 for outsiders (and
    for members when ``admin`` is required). DRF answers Django's PermissionDenied with a 403 too."""
    project = get_object_or_404(Project, slug=slug)
    role = role_in(user, project)
    if role is None:
        raise PermissionDenied(f"you are not a member of project {slug}")
    if admin and role != Membership.Role.ADMIN:
        raise PermissionDenied(f"only project admins of {slug} may do this")
    return project, role
