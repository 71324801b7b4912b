"""Simulated annotators: rank a task's candidates by the demo world's verifiable reward, with noise.

They go through the same queue services as people (next task → submit), so the loop can be shown
and tested without people. No torch here: the verifiable rewards are plain Python. They come in kinds
(``rlhf.engine.demo.annotators.KINDS``: careful, noisy, adversarial, random, lazy), so that the quality
control of human feedback has annotators whose worth is known to find out.
"""

from __future__ import annotations

import random
import uuid

from django.contrib.auth import get_user_model

from annotation.models import Membership, Project
from annotation.selectors import candidates_for_annotator
from annotation.services import queue
from annotation.services.projects import member_set
from rlhf.engine.demo.annotators import kinds_list, simulated_ordering


def simulated_annotators(project: Project, n: int, kind: str | None = None) -> list:
    """``n`` simulated members of ``project``: ``sim-<project>-<i>``, or ``sim-<project>-<kind>-<i>`` when
    a kind is named (so that people of different kinds never share a user)."""
    User = get_user_model()
    people = []
    for i in range(1, n + 1):
        name = f"sim-{project.slug}-{i}" if kind is None else f"sim-{project.slug}-{kind}-{i}"
        user, _ = User.objects.get_or_create(username=name[:150])
        member_set(project=project, user=user, role=Membership.Role.ANNOTATOR)
        people.append(user)
    return people


def simulate(project: Project, *, annotators: int = 4, noise: float = 0.1, limit: int | None = None, seed: int = 0,
             kinds: dict[str, int] | list[str] | None = None) -> dict:
    """Let simulated people work the queue round-robin until it is empty or ``limit`` rankings were made.

    Without ``kinds``: ``annotators`` careful people (``sim-<project>-<i>``). With ``kinds``, a mix such as
    ``{"careful": 4, "adversarial": 2, "random": 2}`` (or a list with one kind per person), that many people
    of each kind (``sim-<project>-<kind>-<i>``) and ``annotators`` is not read. Each ranks the candidates in
    the order the page shows them to that person (``candidates_for_annotator``), which is what a lazy one
    keeps. Returns counts: ``rankings``, ``skipped``, and ``annotators`` (username → kind)."""
    rng = random.Random(seed)
    if kinds is None:
        people = simulated_annotators(project, annotators)
        kind_of = {person.pk: "careful" for person in people}
    else:
        listed = kinds_list(kinds)
        if not listed:
            raise ValueError("kinds names no simulated annotator")
        people, kind_of = [], {}
        for kind in dict.fromkeys(listed):
            for person in simulated_annotators(project, listed.count(kind), kind):
                people.append(person)
                kind_of[person.pk] = kind
    done = skipped = 0
    idle = set()
    while (limit is None or done < limit) and len(idle) < len(people):
        for person in people:
            if person.pk in idle or (limit is not None and done >= limit):
                continue
            assignment = queue.next_task(annotator=person, project=project)
            if assignment is None:
                idle.add(person.pk)
                continue
            task = assignment.task
            prompt = task.prompt
            ground_truth = prompt.ground_truth or prompt.image.ground_truth
            if not ground_truth:
                queue.skip_task(annotator=person, task_id=task.pk, reason="no ground truth to judge by")
                skipped += 1
                continue
            texts = {c.pk: c.text for c in candidates_for_annotator(task, person.pk)}  # in the order shown
            ordering = simulated_ordering(prompt.text, texts, ground_truth, rng, noise, kind_of[person.pk])
            queue.submit_ranking(
                annotator=person, task_id=task.pk, ordering=ordering, client_uuid=uuid.uuid4(),
                time_spent_ms=rng.randint(2000, 9000),
            )
            done += 1
    return {"rankings": done, "skipped": skipped,
            "annotators": {person.username: kind_of[person.pk] for person in people}}
