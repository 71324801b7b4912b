"""Creating projects and managing who belongs to them."""

from __future__ import annotations

from django.db import transaction
from django.utils.text import slugify

from annotation.models import Membership, Project


@transaction.atomic
def project_create(
    *,
    name: str,
    created_by=None,
    slug: str = "",
    task_type: str = Project.TaskType.CAPTION,
    candidates_per_task: int = 4,
    overlap: int = 1,
    lease_minutes: int = 30,
    instructions: str = "",
    base_model: str = "",
) -> Project:
    """Create a project (validated like a form would) and make its creator a project admin."""
    project = Project(
        name=name,
        slug=slug or slugify(name)[:100],
        task_type=task_type,
        candidates_per_task=candidates_per_task,
        overlap=overlap,
        lease_minutes=lease_minutes,
        instructions=instructions,
        base_model=base_model,
        created_by=created_by,
    )
    project.full_clean()
    project.save()
    if created_by is not None:
        member_set(project=project, user=created_by, role=Membership.Role.ADMIN)
    return project


def member_set(*, project: Project, user, role: str) -> Membership:
    """Add ``user`` to ``project`` with ``role``, or change their role."""
    if role not in Membership.Role.values:
        raise ValueError(f"role must be one of {Membership.Role.values}, not {role!r}")
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def member_remove(*, project: Project, user) -> bool:
    """Remove ``user`` from ``project``. Their rankings stay; their active leases run out as usual."""
    deleted, _ = Membership.objects.filter(project=project, user=user).delete()
    return bool(deleted)
