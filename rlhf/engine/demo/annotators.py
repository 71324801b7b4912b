"""Simulated annotators for the demo world: rank candidates by their verifiable correctness and turn
rankings into preference records in the export format of DESIGN.md. Pure Python (no torch, no Django).

The one place of the simulated annotator's judgement: the engine's tests and benchmarks use it here, and
the loop's simulated people (``rlhf.simulate``) rank their queue's tasks with ``simulated_ordering``.
Rankings become pairs by the export format's rule, ``lensloop.formats.pairs_from_groups``, as the app's do.

Annotators come in kinds (``KINDS``), so that quality control (``annotation.quality``) can be tested and
benchmarked against annotators whose worth is known:

- ``careful`` (the default, and what the loop always had): by the scores, with ``noise``'s occasional swaps
  of neighbouring groups;
- ``noisy``: the same with at least ``NOISY_SWAP`` swap probability;
- ``adversarial``: the careful annotator's ordering reversed (with ``noise`` 0 every pair is the wrong way);
- ``random``: a uniformly random order, one candidate per group, blind to the scores;
- ``lazy``: the order in which the candidates are shown (the order of the keys), one per group.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

from lensloop import formats

from . import world
from .rewards import demo_reward


def demo_scores(prompt: str, candidates: list[str], gt: dict) -> list[float]:
    """What a simulated annotator judges by: each candidate's verifiable reward against the ground truth."""
    return demo_reward([prompt] * len(candidates), candidates, ground_truth=[gt] * len(candidates))


def rank_candidates(prompt: str, candidates: list[str], gt: dict, rng: random.Random, noise: float = 0.0) -> list[int]:
    """Ranks (0 = best) of `candidates` by demo_reward; equal rewards share a rank (ties). With `noise`
    > 0 a Gaussian of that scale perturbs each score first (a less reliable annotator)."""
    scores = demo_scores(prompt, candidates, gt)
    scores = [s + rng.gauss(0, noise) if noise else s for s in scores]
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) for s in scores]


def noisy_ordering(scores: dict, rng: random.Random, noise: float) -> list[list]:
    """Groups of candidate keys, best first; equal scores tie. Each neighbouring pair of groups is swapped with
    probability ``noise`` (an annotator's occasional mistake): the simulated annotators of the loop."""
    distinct = sorted(set(scores.values()), reverse=True)
    groups = [[key for key, s in scores.items() if s == value] for value in distinct]
    for i in range(len(groups) - 1):
        if rng.random() < noise:
            groups[i], groups[i + 1] = groups[i + 1], groups[i]
    return groups


KINDS = ("careful", "noisy", "adversarial", "random", "lazy")
NOISY_SWAP = 0.3  # the ``noisy`` kind's least swap probability: three times the loop's default noise


def ordering_of_kind(kind: str, scores: dict, rng: random.Random, noise: float) -> list[list]:
    """Groups of the keys of ``scores`` (key → how good the candidate truly is), best first, as an annotator
    of ``kind`` (one of ``KINDS``) ranks them; the keys' order is the order in which they are shown."""
    if kind == "careful":
        return noisy_ordering(scores, rng, noise)
    if kind == "noisy":
        return noisy_ordering(scores, rng, max(noise, NOISY_SWAP))
    if kind == "adversarial":
        return noisy_ordering(scores, rng, noise)[::-1]
    if kind == "random":
        keys = list(scores)
        rng.shuffle(keys)
        return [[key] for key in keys]
    if kind == "lazy":
        return [[key] for key in scores]
    raise ValueError(f"unknown annotator kind {kind!r}; the kinds are {', '.join(KINDS)}")


def simulated_ordering(prompt: str, candidates: dict, gt: dict, rng: random.Random, noise: float,
                       kind: str = "careful") -> list[list]:
    """A simulated annotator's ranking of ``candidates`` (key → text, in the order shown) as groups of keys,
    best first: by ``demo_scores`` as an annotator of ``kind`` judges (``ordering_of_kind``); the default,
    ``careful``, is ``noisy_ordering``'s occasional swaps."""
    keys = list(candidates)
    scores = dict(zip(keys, demo_scores(prompt, [candidates[k] for k in keys], gt), strict=True))
    return ordering_of_kind(kind, scores, rng, noise)


def kinds_list(kinds: dict[str, int] | list[str] | tuple[str, ...]) -> list[str]:
    """One kind per simulated annotator, from a mix (``{"careful": 4, "adversarial": 2}``) or a list of kinds
    (``["careful", "careful", "random"]``); unknown kinds and negative counts raise ValueError."""
    listed = [k for kind, n in kinds.items() for k in [kind] * _count(kind, n)] if isinstance(kinds, dict) else list(kinds)
    unknown = sorted(set(listed) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown annotator kinds {unknown}; the kinds are {', '.join(KINDS)}")
    return listed


def _count(kind: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of {kind!r} annotators must be a whole number ≥ 0, not {n!r}")
    return n


def simulated_rankings(n_tasks: int, kinds: dict[str, int] | list[str], *, overlap: int = 2, k: int = 4,
                       seed: int = 0, noise: float = 0.1) -> tuple[list[tuple[int, int, list[list]]], list[list[float]]]:
    """A synthetic world for quality control, without images or Django: ``n_tasks`` tasks of ``k`` candidates
    (ids ``0 … k-1`` per task) with true scores drawn from N(0, 1), each ranked by ``overlap`` distinct
    annotators drawn at random from the mix ``kinds`` (annotator ids ``0 … n-1`` in ``kinds_list`` order),
    the candidates shown to each in a fresh random order (what a ``lazy`` one ranks by).

    Returns ``(rankings, truth)``: ``rankings`` as ``(task_id, annotator_id, ordering)`` (the input of
    ``annotation.quality``), ``truth[t][c]`` candidate ``c``'s true score in task ``t``."""
    people = kinds_list(kinds)
    if not 1 <= overlap <= len(people):
        raise ValueError(f"overlap must lie in [1, {len(people)}] for {len(people)} annotators")
    rng = random.Random(seed)
    rankings, truth = [], []
    for t in range(n_tasks):
        scores = [rng.gauss(0.0, 1.0) for _ in range(k)]
        truth.append(scores)
        for a in rng.sample(range(len(people)), overlap):
            shown = list(range(k))
            rng.shuffle(shown)
            rankings.append((t, a, ordering_of_kind(people[a], {c: scores[c] for c in shown}, rng, noise)))
    return rankings, truth


def ranking_to_pairs(candidates: list[str], ranks: list[int]) -> list[tuple[str, str, int]]:
    """(chosen, rejected, margin) for every pair with different ranks; margin = rank distance (``ranks`` as
    ``rank_candidates`` gives them: 0, 1, … without gaps). The app's rule (``pairs_from_groups``) on the
    candidates' positions, in the order of the positions (chosen's, then rejected's)."""
    groups = [[i for i, r in enumerate(ranks) if r == level] for level in sorted(set(ranks))]
    return [(candidates[i], candidates[j], margin) for i, j, margin in sorted(formats.pairs_from_groups(groups))]


def write_demo_preferences(out_dir: str | Path, n: int, seed: int, k: int = 4, task_type: str = "caption",
                           project: str = "demo", noise: float = 0.0) -> dict[str, Path]:
    """Write a demo dataset into `out_dir`: `images/`, `manifest.jsonl` (import manifest),
    `prompts.jsonl` (prompt set), `preferences.jsonl` (records ranked by a simulated annotator).
    Returns the paths by name."""
    out = Path(out_dir)
    manifest = world.write_demo_manifest(out, n, seed, task_type=task_type, k=k)
    rng = random.Random(seed + 7)
    prompts, prefs = [], []
    created = datetime(2025, 1, 1, tzinfo=UTC).isoformat()
    for i, line in enumerate(manifest.read_text().splitlines()):
        row = json.loads(line)
        pid = f"p{i + 1:06d}"
        prompts.append({"prompt_id": pid, "images": [row["image"]], "prompt": row["prompt"],
                        "reference": row["reference"], "ground_truth": row["ground_truth"], "split": row["split"]})
        ranks = rank_candidates(row["prompt"], row["candidates"], row["ground_truth"], rng, noise)
        for j, (chosen, rejected, margin) in enumerate(ranking_to_pairs(row["candidates"], ranks)):
            prefs.append({"id": f"{pid}-{j}", "project": project, "images": [row["image"]], "prompt": row["prompt"],
                          "chosen": chosen, "rejected": rejected, "margin": margin, "annotator": "sim-0",
                          "ranking_id": pid, "created": created, "split": row["split"]})
    paths = {"manifest": manifest, "prompts": out / "prompts.jsonl", "preferences": out / "preferences.jsonl"}
    paths["prompts"].write_text("".join(json.dumps(p) + "\n" for p in prompts))
    paths["preferences"].write_text("".join(json.dumps(p) + "\n" for p in prefs))
    train = [p for p in prefs if p["split"] == "train"]
    held = [p for p in prefs if p["split"] == "eval"]
    paths["preferences_train"] = out / "preferences_train.jsonl"
    paths["preferences_eval"] = out / "preferences_eval.jsonl"
    paths["preferences_train"].write_text("".join(json.dumps(p) + "\n" for p in train))
    paths["preferences_eval"].write_text("".join(json.dumps(p) + "\n" for p in held))
    return paths
