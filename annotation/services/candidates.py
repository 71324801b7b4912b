"""Bring model samples into the queue: candidates plus the ranking tasks that compare them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.db import transaction

from annotation.models import Candidate, Project, Prompt, RankingTask


@dataclass
class Opened:
    """What ``open_tasks_from_samples`` wrote: the candidates (with their ids and meta) and the tasks, so a
    caller can link them to what it knows about them (the loop: which version, which run)."""

    candidates: list[Candidate]
    tasks: list[RankingTask]
    short: int

    def summary(self) -> dict:
        return {"candidates": len(self.candidates), "tasks": len(self.tasks), "short": self.short}


@transaction.atomic
def open_tasks_from_samples(
    *,
    project: Project,
    samples: list[dict],
    source: str,
    priorities: dict[int, float] | None = None,
    origin: str = "",
    meta: dict | None = None,
) -> Opened:
    """Store samples (``{"prompt_id", "text", "logprob"?, "reward"?, "source"?, "meta"?}``) as candidates of
    ``source`` (or the sample's own, so one task can mix two model versions) and open one ranking task
    per prompt that got exactly K distinct texts.

    Prompts with fewer distinct texts get their candidates stored but no task (counted as ``short``);
    samples for prompts outside the project are refused with ValueError.
    """
    k = project.candidates_per_task
    by_prompt: dict[int, list[dict]] = defaultdict(list)
    for sample in samples:
        by_prompt[int(sample["prompt_id"])].append(sample)
    known = set(Prompt.objects.filter(project=project, pk__in=list(by_prompt)).values_list("pk", flat=True))
    foreign = sorted(set(by_prompt) - known)
    if foreign:
        raise ValueError(f"samples name prompts {foreign[:10]} that are not in project {project.slug}")
    candidates, plan = [], []
    for prompt_id, items in by_prompt.items():
        seen: set[str] = set()
        chosen = []
        for item in items:
            text = str(item["text"]).strip()
            if text and text not in seen:
                seen.add(text)
                chosen.append(item)
        for item in chosen:
            extra = {key: item[key] for key in ("logprob", "reward") if item.get(key) is not None}
            candidates.append(
                Candidate(
                    prompt_id=prompt_id,
                    text=str(item["text"]).strip(),
                    source=item.get("source") or source,
                    meta={**(meta or {}), **extra, **(item.get("meta") or {})},
                )
            )
        plan.append((prompt_id, len(chosen)))
    Candidate.objects.bulk_create(candidates)
    tasks, short, at = [], 0, 0
    for prompt_id, n in plan:
        ids = [c.pk for c in candidates[at : at + n]]
        at += n
        if n < k:
            short += 1
            continue
        tasks.append(
            RankingTask(
                project=project,
                prompt_id=prompt_id,
                candidate_ids=ids[:k],
                priority=(priorities or {}).get(prompt_id, 0.0),
                required_annotations=project.overlap,
                origin=origin,
            )
        )
    RankingTask.objects.bulk_create(tasks)
    return Opened(candidates=candidates, tasks=tasks, short=short)
