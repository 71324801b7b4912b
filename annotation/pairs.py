"""From a ranking with ties to preference pairs. Pure functions, no database."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from annotation.exceptions import InvalidRanking

T = TypeVar("T")  # candidate ids in the app, positions in the engine demo


def normalise_ordering(ordering: object, candidate_ids: Iterable[int]) -> list[list[int]]:
    """Check that ``ordering`` ranks exactly ``candidate_ids`` and return it as a list of int groups.

    ``ordering`` is best first; each element is a group of tied candidate ids (a bare id counts as a
    group of one). Raises ``InvalidRanking`` naming what is wrong.
    """
    expected = list(candidate_ids)
    if not isinstance(ordering, list | tuple) or not ordering:
        raise InvalidRanking("ordering must be a non-empty list of groups of candidate ids, best first")
    groups: list[list[int]] = []
    seen: set[int] = set()
    twice: list[int] = []
    for position, group in enumerate(ordering, start=1):
        members = group if isinstance(group, list | tuple) else [group]
        if not members:
            raise InvalidRanking(f"group {position} of the ordering is empty")
        clean: list[int] = []
        for item in members:
            if isinstance(item, bool) or not isinstance(item, int):
                raise InvalidRanking(f"group {position} holds {item!r}, which is not a candidate id")
            if item in seen:
                twice.append(item)
            seen.add(item)
            clean.append(item)
        groups.append(clean)
    if twice:
        raise InvalidRanking(f"candidates {sorted(set(twice))} appear more than once in the ordering")
    missing = sorted(set(expected) - seen)
    unknown = sorted(seen - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"it leaves out candidates {missing}")
        if unknown:
            parts.append(f"candidates {unknown} are not in this task")
        raise InvalidRanking(
            "ordering must rank exactly the task's candidates " + str(sorted(expected)) + ": " + "; ".join(parts),
            missing=missing,
            unknown=unknown,
        )
    return groups


def pairs_from_groups(groups: Sequence[Sequence[T]]) -> list[tuple[T, T, int]]:
    """Every (chosen, rejected, margin) implied by a ranking; tied candidates give no pair.

    ``margin`` is the rank distance between the two groups (1 for neighbours). The one rule from a ranking
    to pairs: the queue's submits use it, and so do the engine demo's simulated annotators
    (``rlhf.engine.demo.annotators``), which is why this module stays free of Django.
    """
    pairs = []
    for i, better in enumerate(groups):
        for j in range(i + 1, len(groups)):
            for chosen in better:
                for rejected in groups[j]:
                    pairs.append((chosen, rejected, j - i))
    return pairs
