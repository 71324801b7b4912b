"""Simulated annotators: rank a task's candidates by the demo world's verifiable reward, with noise.

They go through the same queue services as people (next task → submit), so the loop can be shown
and tested without people. No torch here: the verifiable rewards are plain Python.
"""

from __future__ import annotations

import random
import uuid

from django.contrib.auth import get_user_model

from annotation.models import Candidate, Membership, Project
from annotation.services import queue
from annotation.services.projects import member_set
from rlhf.engine.demo.annotators import simulated_ordering


def simulated_annotators(project: Project, n: int) -> list:
    User = get_user_model()
    people = []
    for i in range(1, n + 1):
        user, _ = User.objects.get_or_create(username=f"sim-{project.slug}-{i}"[:150])
        member_set(project=project, user=user, role=Membership.Role.ANNOTATOR)
        people.append(user)
    return people


def simulate(project: Project, *, annotators: int = 4, noise: float = 0.1, limit: int | None = None, seed: int = 0) -> dict:
    """Let ``annotators`` simulated people work the queue round-robin until it is empty or ``limit``
    rankings were made. Returns counts."""
    rng = random.Random(seed)
    people = simulated_annotators(project, annotators)
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
            texts = dict(Candidate.objects.filter(pk__in=task.candidate_ids).values_list("pk", "text"))
            ordering = simulated_ordering(prompt.text, texts, ground_truth, rng, noise)
            queue.submit_ranking(
                annotator=person, task_id=task.pk, ordering=ordering, client_uuid=uuid.uuid4(),
                time_spent_ms=rng.randint(2000, 9000),
            )
            done += 1
    return {"rankings": done, "skipped": skipped}
