"""Tiny factories for tests: users, projects with members, images, prompts with candidates and tasks."""

from __future__ import annotations

import io
import itertools

from django.contrib.auth import get_user_model
from PIL import Image as PILImage

from annotation.images import check_image, store_image
from annotation.models import Candidate, Image, Membership, Project, Prompt, RankingTask
from annotation.services.projects import member_set

_seq = itertools.count(1)


def user(username: str, **extra):
    User = get_user_model()
    obj, _ = User.objects.get_or_create(username=username, defaults=extra)
    obj.set_password("pw-" + username)
    obj.save()
    return obj


def png_bytes(color=(200, 30, 30), size=(32, 24), fmt="PNG", exif=None) -> bytes:
    img = PILImage.new("RGB", size, color)
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def image(color=None) -> Image:
    n = next(_seq)
    checked = check_image(png_bytes(color or (n % 256, (n // 256) % 256, 77)))
    store_image(checked)
    obj, _ = Image.objects.get_or_create(
        sha256=checked.sha256,
        defaults=dict(
            file=checked.relpath, format=checked.format, width=checked.width, height=checked.height,
            size_bytes=checked.size_bytes,
        ),
    )
    return obj


def project(slug: str | None = None, *, k: int = 4, overlap: int = 1, lease_minutes: int = 30, admins=(), annotators=()):
    slug = slug or f"p{next(_seq)}"
    proj = Project.objects.create(
        name=slug.title(), slug=slug, candidates_per_task=k, overlap=overlap, lease_minutes=lease_minutes
    )
    for u in admins:
        member_set(project=proj, user=u, role=Membership.Role.ADMIN)
    for u in annotators:
        member_set(project=proj, user=u, role=Membership.Role.ANNOTATOR)
    return proj


def task(proj: Project, *, priority: float = 0.0, texts=None, source: str = "import") -> RankingTask:
    n = next(_seq)
    prompt = Prompt.objects.create(project=proj, image=image(), text=f"Describe image {n}.")
    texts = texts or [f"answer {i} to {n}" for i in range(proj.candidates_per_task)]
    cands = Candidate.objects.bulk_create(Candidate(prompt=prompt, text=t, source=source) for t in texts)
    return RankingTask.objects.create(
        project=proj,
        prompt=prompt,
        candidate_ids=[c.pk for c in cands],
        priority=priority,
        required_annotations=proj.overlap,
    )


def tasks(proj: Project, n: int, **kw) -> list[RankingTask]:
    return [task(proj, **kw) for _ in range(n)]


# Simulated annotators of the quality tests: each orders a task's candidate ids (ids ascending = the truth).
def careful_order(candidate_ids, rng) -> list[list[int]]:
    return [[x] for x in sorted(candidate_ids)]


def adversarial_order(candidate_ids, rng) -> list[list[int]]:
    return [[x] for x in sorted(candidate_ids, reverse=True)]


def random_order(candidate_ids, rng) -> list[list[int]]:
    ids = list(candidate_ids)
    rng.shuffle(ids)
    return [[x] for x in ids]


# Three careful annotators, one adversarial, one random.
STYLES = {"carol": careful_order, "cleo": careful_order, "cora": careful_order, "adam": adversarial_order,
          "rita": random_order}


def rank_round_robin(proj: Project, users: dict, rng, styles: dict = STYLES) -> None:
    """Each user of ``users`` (name → user) takes and ranks tasks in turn, in their style, until the queue
    has nothing left for any of them: every annotator shares tasks with every other."""
    import uuid

    from annotation.services import queue

    busy = True
    while busy:
        busy = False
        for name, style in styles.items():
            if name not in users:
                continue
            assignment = queue.next_task(annotator=users[name], project=proj)
            if assignment is None:
                continue
            busy = True
            queue.submit_ranking(
                annotator=users[name], task_id=assignment.task_id,
                ordering=style(assignment.task.candidate_ids, rng), client_uuid=uuid.uuid4(),
            )
