"""From a ranking with ties to preference pairs. Pure functions, no database. The pairs a ranking implies
are the export format's rule, ``lensloop.formats.pairs_from_groups``, which the engine's demo uses too."""

from __future__ import annotations

from collections.abc import Iterable

from annotation.exceptions import InvalidRanking
from lensloop.formats import pairs_from_groups

__all__ = ["normalise_ordering", "pairs_from_groups"]  # the rule itself lives with the export format


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
