"""Which model version do annotators prefer? A Bradley–Terry fit over human pairs whose two candidates
come from different players, with bootstrap confidence intervals.

Bradley & Terry (1952): P(i ≻ j) = p_i / (p_i + p_j). Fitted with Hunter's (2004) MM iteration
p_i ← W_i / Σ_j n_ij / (p_i + p_j), where W_i counts i's wins and n_ij the comparisons of i and j.
Scores are reported as Elo-like ratings, 400·log10(p_i / geometric mean p) + 1000.

A player is the model version that generated a candidate (by its current label, ``rlhf.lineage``), else
the candidate's ``source`` (imported or human candidates).

``split="eval"`` fits only the pairs of held-out prompts (never trained on): versions compared on the same
held-out set, as the versions page shows them by default.

Not choix: its MM fit (``choix.mm_pairwise``) has no prior, so a version that never lost has no finite
strength, and it fits one data set at a time; the fit below is a few lines of numpy that fits all bootstrap
resamples at once. The result is cached (``leaderboard``), keyed by what it depends on.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict

import numpy as np
from django.core.cache import cache
from django.db.models import Count, F, Max

from annotation.models import Project
from rlhf.lineage import player_pairs
from rlhf.models import ModelVersion

CACHE_SECONDS = 24 * 3600  # the key changes with the data; this only bounds what a cache keeps


def _fit(wins: np.ndarray, iterations: int, prior: float) -> np.ndarray:
    """``wins[b, i, j]`` = times i beat j in data set b (a stack of data sets fitted at once). Returns the
    strengths ``(b, i)`` normalised to geometric mean 1 over each set's players; NaN for a player a set does
    not compare at all."""
    games = wins + wins.transpose(0, 2, 1)
    compared = games > 0
    # `prior` virtual wins both ways between every compared pair: a player that never lost stays finite.
    n = games + 2 * prior * compared
    w = wins.sum(axis=2) + prior * compared.sum(axis=2)
    present = compared.any(axis=2)
    players = np.maximum(present.sum(axis=1, keepdims=True), 1)
    p = np.ones(w.shape)
    for _ in range(iterations):
        denom = (n / (p[:, :, None] + p[:, None, :])).sum(axis=2)
        new = np.where(denom > 0, w / np.where(denom > 0, denom, 1.0), p)
        log_mean = np.where(present, np.log(new), 0.0).sum(axis=1, keepdims=True) / players
        p = new / np.exp(log_mean)
    return np.where(present, p, np.nan)


def fit_bradley_terry(wins: Counter, iterations: int = 200, prior: float = 0.5) -> dict[str, float]:
    """``wins[(a, b)]`` = times a beat b. Returns strengths normalised to geometric mean 1.

    ``prior`` adds that many virtual wins both ways between every compared pair, so a version that
    never lost still gets a finite strength.
    """
    players = sorted({p for pair in wins for p in pair})
    if not players:
        return {}
    index = {p: i for i, p in enumerate(players)}
    matrix = np.zeros((1, len(players), len(players)))
    for (a, b), count in wins.items():
        matrix[0, index[a], index[b]] += count
    strengths = _fit(matrix, iterations, prior)[0]
    return {p: float(strengths[i]) for i, p in enumerate(players) if not math.isnan(strengths[i])}


def _rating(strength):
    return 1000 + 400 * np.log10(strength)


def _python_rng_uniforms(rng: random.Random, size: int) -> np.ndarray:
    """The next ``size`` values ``rng.random()`` would give, drawn by numpy: both are the Mersenne Twister
    with the same 53-bit doubles, so numpy continues from ``rng``'s state. ``random.choices(seq, k=n)`` is
    ``seq[floor(random() * n)]`` k times, so the bootstrap draws the same resamples as it did in Python."""
    state = rng.getstate()[1]
    numpy_rng = np.random.RandomState()
    numpy_rng.set_state(("MT19937", np.array(state[:624], dtype=np.uint32), state[624]))
    return numpy_rng.random_sample(size)


def board_from_rows(rows: list[tuple[int, str, str]], *, bootstrap: int = 200, seed: int = 0) -> list[dict]:
    """The leaderboard of ``(ranking id, chosen player, rejected player)`` rows: sorted best first, each with
    its rating, 95% interval (bootstrap over rankings), comparisons (pairs), rankings and win rate."""
    if not rows:
        return []
    players = sorted({p for _, a, b in rows for p in (a, b)})
    index = {p: i for i, p in enumerate(players)}
    rankings = list(dict.fromkeys(ranking_id for ranking_id, _, _ in rows))  # in order of first appearance
    ranking_index = {r: i for i, r in enumerate(rankings)}
    size = len(players)
    row_ranking = np.array([ranking_index[r] for r, _, _ in rows])
    row_cell = np.array([index[a] * size + index[b] for _, a, b in rows])  # (winner, loser) cell of each pair
    wins = np.bincount(row_cell, minlength=size * size).reshape(1, size, size).astype(float)
    strengths = _fit(wins, 200, 0.5)[0]

    # Resample rankings, not pairs: pairs of one ranking are not independent. A resample counts each pair
    # as often as its ranking was drawn.
    draws = np.floor(_python_rng_uniforms(random.Random(seed), bootstrap * len(rankings)) * len(rankings))
    resampled = np.zeros((bootstrap, size * size))
    for b, drawn in enumerate(draws.astype(int).reshape(bootstrap, len(rankings))):
        times = np.bincount(drawn, minlength=len(rankings))
        resampled[b] = np.bincount(row_cell, weights=times[row_ranking], minlength=size * size)
    samples = _rating(_fit(resampled.reshape(bootstrap, size, size), 60, 0.5))

    games, won = Counter(), Counter()
    rankings_of: dict[str, set[int]] = defaultdict(set)
    for ranking_id, a, b in rows:
        rankings_of[a].add(ranking_id)
        rankings_of[b].add(ranking_id)
        games[a] += 1
        games[b] += 1
        won[a] += 1
    out = []
    for player, i in index.items():
        rating = float(_rating(strengths[i]))
        values = np.sort(samples[:, i][~np.isnan(samples[:, i])])
        if not len(values):
            values = np.array([rating])
        out.append(
            {
                "source": player,
                "rating": round(rating, 1),
                "ci_low": round(float(values[int(0.025 * (len(values) - 1))]), 1),
                "ci_high": round(float(values[int(0.975 * (len(values) - 1))]), 1),
                "comparisons": games[player],
                "rankings": len(rankings_of[player]),
                "win_rate": round(won[player] / games[player], 3) if games[player] else None,
            }
        )
    return sorted(out, key=lambda r: -r["rating"])


def _cache_key(project: Project, pairs, *, bootstrap: int, seed: int, split: str | None) -> str:
    """What the board depends on: the project's pairs (their number, the newest id and time: pairs are only
    ever added or deleted) and its versions' labels (the players' names)."""
    stats = pairs.aggregate(n=Count("pk"), last=Max("pk"), at=Max("created_at"))
    labels = list(ModelVersion.objects.filter(project=project).order_by("pk").values_list("pk", "label"))
    fingerprint = hashlib.sha256(repr((project.pk, str(project.created_at), stats["n"], stats["last"],
                                       str(stats["at"]), labels)).encode()).hexdigest()[:32]
    return f"lensloop:leaderboard:{project.pk}:{split or 'all'}:{bootstrap}:{seed}:{fingerprint}"


def leaderboard(project: Project, *, bootstrap: int = 200, seed: int = 0, split: str | None = None) -> list[dict]:
    """Rows sorted best first: source (the player), rating, 95% interval (bootstrap over rankings),
    comparisons (pairs), rankings, win rate. ``split``: only the pairs of prompts of that split ("eval":
    held out). Computed once per state of the project's pairs and versions, then served from the cache."""
    pairs = player_pairs(project, split=split)
    key = _cache_key(project, pairs, bootstrap=bootstrap, seed=seed, split=split)
    board = cache.get(key)
    if board is None:
        rows = list(pairs.exclude(chosen_player=F("rejected_player")).order_by("pk")
                    .values_list("ranking_id", "chosen_player", "rejected_player"))
        board = board_from_rows(rows, bootstrap=bootstrap, seed=seed)
        cache.set(key, board, CACHE_SECONDS)
    return board
