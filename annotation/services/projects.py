"""Creating and changing projects, and managing who belongs to them."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from annotation.models import Membership, Project

DEMO_MODEL = "demo"
# A Hugging Face hub id: `org/name`, neither part starting with '.' or '-' (so never `..`).
HUB_ID = re.compile(r"[\w][\w.-]*/[\w][\w.-]*")


def model_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.LENSLOOP_MODEL_ROOTS]


def check_model_path(value: str, *, user=None, unrestricted: bool = False) -> str:
    """The base model ``user`` may give a project, normalised; raises ValidationError otherwise.

    The training workers load whatever a project names, so a project admin could otherwise have them
    read any folder they can. Allowed: empty or ``demo`` (the built-in model); an absolute folder inside
    one of ``LENSLOOP_MODEL_ROOTS`` once ``..`` and symbolic links are resolved (the resolved path is
    what is kept, so a link swapped later changes nothing); a hub id (``org/name``) when
    ``LENSLOOP_ALLOW_HUB_MODELS`` is on. Superusers, and ``unrestricted`` callers (the command line),
    may name anything.
    """
    value = value.strip()
    if not value or value == DEMO_MODEL or unrestricted or getattr(user, "is_superuser", False):
        return value
    roots = model_roots()
    where = ", ".join(str(root) for root in roots) or "none configured"
    path = Path(value)
    if path.is_absolute():
        real = path.resolve()
        if any(real.is_relative_to(root) for root in roots):
            return str(real)
        raise ValidationError(
            f"{value} is outside the model folders a project may use ({where}): copy the model into one of "
            f"them, or ask an operator to add its folder to LENSLOOP_MODEL_ROOTS",
            code="model_path",
        )
    if HUB_ID.fullmatch(value):
        if not settings.LENSLOOP_ALLOW_HUB_MODELS:
            raise ValidationError(
                f"{value} looks like a hub id, and hub models are off here (LENSLOOP_ALLOW_HUB_MODELS): give an "
                f"absolute folder inside one of {where}, or '{DEMO_MODEL}'",
                code="model_path",
            )
        if path.exists():
            # The engine loads a local folder of that name before asking the hub.
            raise ValidationError(f"{value} is also a folder here; give an absolute folder inside one of {where}",
                                  code="model_path")
        return value
    raise ValidationError(
        f"{value} is not an absolute folder: give one inside {where}, or '{DEMO_MODEL}'", code="model_path"
    )


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
    heldout_fraction: float = 0.1,
    any_model_path: bool | None = None,
    **gold,
) -> Project:
    """Create a project (validated like a form would) and make its creator a project admin.

    ``base_model`` must pass ``check_model_path`` for ``created_by``; ``any_model_path=True`` lifts that
    for callers who may read the workers' files anyway (the command line). By default it is lifted only
    when there is no creator or the creator is a superuser. ``gold``: the gold-task settings (``gold_rate``,
    ``gold_min_count``, ``gold_threshold``, ``gold_pause``); the model's defaults where left out.
    """
    unknown = sorted(set(gold) - set(GOLD_SETTINGS))
    if unknown:
        raise TypeError(f"project_create() got unexpected arguments: {', '.join(unknown)}")
    if any_model_path is None:
        any_model_path = created_by is None
    base_model = _checked_base_model(base_model, user=created_by, unrestricted=any_model_path)
    project = Project(
        name=name,
        slug=slug or slugify(name)[:100],
        task_type=task_type,
        candidates_per_task=candidates_per_task,
        overlap=overlap,
        lease_minutes=lease_minutes,
        instructions=instructions,
        base_model=base_model,
        heldout_fraction=heldout_fraction,
        created_by=created_by,
        **gold,
    )
    project.full_clean()
    project.save()
    if created_by is not None:
        member_set(project=project, user=created_by, role=Membership.Role.ADMIN)
    return project


GOLD_SETTINGS = ("gold_rate", "gold_min_count", "gold_threshold", "gold_pause")

# Fields a project admin may change (the API's PATCH, the settings page).
EDITABLE = ("name", "slug", "task_type", "instructions", "candidates_per_task", "overlap", "lease_minutes", "base_model",
            "heldout_fraction", *GOLD_SETTINGS)


@transaction.atomic
def project_update(*, project: Project, user, **changes) -> Project:
    """Change a project's settings as ``user`` (a project admin): validated like a form would, and a new
    base model must pass ``check_model_path`` for ``user``."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValueError(f"project_update cannot change {unknown}")
    if "base_model" in changes and changes["base_model"] != project.base_model:
        changes["base_model"] = _checked_base_model(changes["base_model"], user=user)
    for field, value in changes.items():
        setattr(project, field, value)
    project.full_clean()
    project.save(update_fields=list(changes) or None)
    return project


def _checked_base_model(value: str, *, user, unrestricted: bool = False) -> str:
    try:
        return check_model_path(value, user=user, unrestricted=unrestricted)
    except ValidationError as exc:
        raise ValidationError({"base_model": exc.error_list}) from None


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
