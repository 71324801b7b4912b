"""Which model version do annotators prefer? A Bradley–Terry fit over human pairs whose two candidates
come from different sources, with bootstrap confidence intervals.

Bradley & Terry (1952): P(i ≻ j) = p_i / (p_i + p_j). Fitted with Hunter's (2004) MM iteration
p_i ← W_i / Σ_j n_ij / (p_i + p_j), where W_i counts i's wins and n_ij the comparisons of i and j.
Scores are reported as Elo-like ratings, 400·log10(p_i / geometric mean p) + 1000.

``split="eval"`` fits only the pairs of held-out prompts (never trained on): versions compared on the same
held-out set, as the versions page shows them by default.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

from django.db.models import F

from annotation.models import PreferencePair, Project


def fit_bradley_terry(wins: Counter, iterations: int = 200, prior: float = 0.5) -> dict[str, float]:
    """``wins[(a, b)]`` = times a beat b. Returns strengths normalised to geometric mean 1.

    ``prior`` adds that many virtual wins both ways between every compared pair, so a version that
    never lost still gets a finite strength.
    """
    players = sorted({p for pair in wins for p in pair})
    if not players:
        return {}
    n = defaultdict(float)
    w = defaultdict(float)
    for (a, b), count in wins.items():
        w[a] += count
        n[(a, b)] += count
        n[(b, a)] += count
    for a, b in list({tuple(sorted(k)) for k in wins}):
        w[a] += prior
        w[b] += prior
        n[(a, b)] += 2 * prior
        n[(b, a)] += 2 * prior
    p = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        new = {}
        for i in players:
            denom = sum(n[(i, j)] / (p[i] + p[j]) for j in players if j != i and n[(i, j)])
            new[i] = w[i] / denom if denom else p[i]
        mean = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        p = {k: v / mean for k, v in new.items()}
    return p


def _rating(strength: float) -> float:
    return 1000 + 400 * math.log10(strength)


def leaderboard(project: Project, *, bootstrap: int = 200, seed: int = 0, split: str | None = None) -> list[dict]:
    """Rows sorted best first: source, rating, 95% interval (bootstrap over rankings), comparisons (pairs),
    rankings, win rate. ``split``: only the pairs of prompts of that split ("eval": held out)."""
    pairs = PreferencePair.objects.filter(project=project)
    if split:
        pairs = pairs.filter(prompt__split=split)
    rows = list(
        pairs.exclude(chosen__source=F("rejected__source")).values_list("ranking_id", "chosen__source", "rejected__source")
    )
    if not rows:
        return []
    by_ranking: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for ranking_id, a, b in rows:
        by_ranking[ranking_id].append((a, b))
    wins = Counter((a, b) for _, a, b in rows)
    strengths = fit_bradley_terry(wins)
    rng = random.Random(seed)
    rankings = list(by_ranking)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(bootstrap):  # resample rankings, not pairs: pairs of one ranking are not independent
        resampled = Counter()
        for ranking_id in rng.choices(rankings, k=len(rankings)):
            resampled.update(by_ranking[ranking_id])
        for player, s in fit_bradley_terry(resampled, iterations=60).items():
            samples[player].append(_rating(s))
    games = Counter()
    won = Counter()
    rankings_of: dict[str, set[int]] = defaultdict(set)
    for ranking_id, a, b in rows:
        rankings_of[a].add(ranking_id)
        rankings_of[b].add(ranking_id)
    for (a, b), count in wins.items():
        games[a] += count
        games[b] += count
        won[a] += count
    out = []
    for player, s in strengths.items():
        values = sorted(samples[player]) or [_rating(s)]
        lo = values[int(0.025 * (len(values) - 1))]
        hi = values[int(0.975 * (len(values) - 1))]
        out.append(
            {
                "source": player,
                "rating": round(_rating(s), 1),
                "ci_low": round(lo, 1),
                "ci_high": round(hi, 1),
                "comparisons": games[player],
                "rankings": len(rankings_of[player]),
                "win_rate": round(won[player] / games[player], 3) if games[player] else None,
            }
        )
    return sorted(out, key=lambda r: -r["rating"])
