"""Simulated annotators for the demo world: rank candidates by their verifiable correctness and turn
rankings into preference records in the export format of DESIGN.md. Pure Python (no torch, no Django).

The one place of the simulated annotator's judgement: the engine's tests and benchmarks use it here, and
the loop's simulated people (``rlhf.simulate``) rank their queue's tasks with ``simulated_ordering``.
Rankings become pairs by the export format's rule, ``lensloop.formats.pairs_from_groups``, as the app's do.
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


def simulated_ordering(prompt: str, candidates: dict, gt: dict, rng: random.Random, noise: float) -> list[list]:
    """A simulated annotator's ranking of ``candidates`` (key → text) as groups of keys, best first: by
    ``demo_scores``, with ``noisy_ordering``'s occasional swaps."""
    keys = list(candidates)
    return noisy_ordering(dict(zip(keys, demo_scores(prompt, [candidates[k] for k in keys], gt), strict=True)), rng, noise)


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
