"""Who may act in a project: one check for the pages, the API and the training pages.

The project and the user's role in it come in one query: on PostgreSQL a prepared statement
(``annotation.rawsql``; it runs on every queue request, and the ORM's query cost about 0.6 ms more per
request, see docs/benchmarks.md), elsewhere the same query through the ORM.
"""

from functools import cache

from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery
from django.http import Http404

from annotation import rawsql
from annotation.models import Membership, Project, RankingTask

_PROJECT_WITH_ROLE = (
    "SELECT {columns}, m.role FROM annotation_project p "
    "LEFT JOIN annotation_membership m ON m.project_id = p.id AND m.user_id = %s "
)
_BY_SLUG = _PROJECT_WITH_ROLE + "WHERE p.slug = %s"
_BY_TASK = _PROJECT_WITH_ROLE + "WHERE p.id = (SELECT t.project_id FROM annotation_rankingtask t WHERE t.id = %s)"


@cache
def _sql(template: str) -> str:
    return template.format(columns=rawsql.columns(Project, "p"))


def _with_role(user):
    """Projects, each with the user's role in it (``user_role``, None for outsiders)."""
    role = Membership.objects.filter(project=OuterRef("pk"), user_id=user.pk if user.is_authenticated else None)
    return Project.objects.annotate(user_role=Subquery(role.values("role")[:1]))


def _project(user, template: str, key, orm_filter) -> Project | None:
    """The project ``template`` finds by ``key`` (the ORM: ``orm_filter()``'s filter), with ``user_role``."""
    if rawsql.plain(Project):
        user_id = user.pk if user.is_authenticated else None
        return rawsql.fetch_one(Project, _sql(template), [user_id, key], extra=("user_role",))
    return _with_role(user).filter(**orm_filter()).first()


def _checked(project: Project | None, user, what: str, *, admin: bool) -> tuple[Project, str]:
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
    project = _project(user, _BY_SLUG, slug, lambda: {"slug": slug})
    return _checked(project, user, f"project {slug}", admin=admin)


def task_project_and_role(user, task_id: int, *, admin: bool = False) -> tuple[Project, str]:
    """Like ``project_and_role``, for the project that holds task ``task_id`` (404 if none does)."""
    def holder() -> dict:
        return {"pk": Subquery(RankingTask.objects.filter(pk=task_id).values("project_id")[:1])}

    project = _project(user, _BY_TASK, task_id, holder)
    return _checked(project, user, f"task {task_id}", admin=admin)
