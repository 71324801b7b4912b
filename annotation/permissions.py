"""Who may act in a project: one check for the pages, the API and the training pages."""

from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.http import Http404

from annotation.models import Membership, Project


def _with_role(projects, user):
    """``projects`` annotated with ``user_role``: the user's role, 'admin' for superusers, else None."""
    if not user.is_authenticated:
        return projects, False
    if user.is_superuser:
        return projects, True
    role = Membership.objects.filter(project=OuterRef("pk"), user=user).values("role")[:1]
    return projects.annotate(user_role=Subquery(role)), False


def _checked(project: Project | None, superuser: bool, what: str, *, admin: bool) -> tuple[Project, str]:
    if project is None:
        raise Http404(f"no {what}")
    role = Membership.Role.ADMIN if superuser else getattr(project, "user_role", None)
    if role is None:
        raise PermissionDenied(f"you are not a member of project {project.slug}")
    if admin and role != Membership.Role.ADMIN:
        raise PermissionDenied(f"only project admins of {project.slug} may do this")
    return project, role


def project_and_role(user, slug: str, *, admin: bool = False) -> tuple[Project, str]:
    """The project and the user's role in it, in one query; 404 if there is no such project, 403 for
    outsiders (and for members when ``admin`` is required). DRF answers Django's PermissionDenied with
    a 403 too."""
    projects, superuser = _with_role(Project.objects.filter(slug=slug), user)
    return _checked(projects.first(), superuser, f"project {slug}", admin=admin)


def task_project_and_role(user, task_id: int, *, admin: bool = False) -> tuple[Project, str]:
    """Like ``project_and_role``, for the project that holds task ``task_id`` (404 if none does)."""
    projects, superuser = _with_role(Project.objects.filter(tasks__id=task_id), user)
    return _checked(projects.first(), superuser, f"task {task_id}", admin=admin)
