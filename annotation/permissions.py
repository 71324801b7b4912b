"""Who may act in a project: one check for the pages, the API and the training pages."""

from functools import cache

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404

from annotation import rawsql
from annotation.models import Membership, Project

# The project with the user's role in it, in one query (hand-written: this runs on every queue request).
_PROJECT_WITH_ROLE = (
    "SELECT {columns}, m.role FROM annotation_project p "
    "LEFT JOIN annotation_membership m ON m.project_id = p.id AND m.user_id = %s "
)
_BY_SLUG = _PROJECT_WITH_ROLE + "WHERE p.slug = %s"
_BY_TASK = _PROJECT_WITH_ROLE + "WHERE p.id = (SELECT t.project_id FROM annotation_rankingtask t WHERE t.id = %s)"


@cache
def _sql(template: str, vendor: str) -> str:
    return template.format(columns=rawsql.columns(Project, "p"))


def _checked(template: str, user, key, what: str, *, admin: bool) -> tuple[Project, str]:
    sql = _sql(template, connection.vendor)
    project = rawsql.fetch_one(Project, sql, [user.pk if user.is_authenticated else None, key], extra=("user_role",))
    if project is None:
        raise Http404(f"no {what}")
    role = Membership.Role.ADMIN if user.is_superuser else project.user_role
    if role is None:
        raise PermissionDenied(f"you are not a member of project {project.slug}")
    if admin and role != Membership.Role.ADMIN:
        raise PermissionDenied(f"only project admins of {project.slug} may do this")
    return project, role


def project_and_role(user, slug: str, *, admin: bool = False) -> tuple[Project, str]:
    """The project and the user's role in it; 404 if there is no such project, 403 for outsiders (and
    for members when ``admin`` is required). Django superusers are admins of every project. DRF
    answers Django's PermissionDenied with a 403 too."""
    return _checked(_BY_SLUG, user, slug, f"project {slug}", admin=admin)


def task_project_and_role(user, task_id: int, *, admin: bool = False) -> tuple[Project, str]:
    """Like ``project_and_role``, for the project that holds task ``task_id`` (404 if none does)."""
    return _checked(_BY_TASK, user, task_id, f"task {task_id}", admin=admin)
