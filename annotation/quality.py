"""Quality control of human feedback, the computational core: how far annotators agree, and how reliable each
one is. Pure Python and numpy, no Django, so that it can be unit-tested and run in a background job; the
callers hand it rankings and store what it returns.

Input everywhere: rankings as ``(task_id, annotator_id, ordering)``, ``ordering`` the stored ranking (groups of
tied candidate ids, best first, e.g. ``[[3], [1, 2], [4]]``). Ids are any hashables; candidate ids should be
of one type (ints in the app, positions in the engine's demo). A candidate is an *item* of its task: only
candidates of the same task are ever compared. When one annotator ranked a task more than once, only the last
of those rankings (in input order) counts.

What a ranking implies is the one rule of the app, ``lensloop.formats.pairs_from_groups`` (``pairs_of``):
every (chosen, rejected, margin) across groups; tied candidates give no pair.

Two measures:

- ``agreement``: for tasks with ≥ 2 rankings, pairwise agreement on the induced pairs (per project and per
  annotator) and Krippendorff's alpha (ordinal) per project, with bootstrap 95% intervals resampling tasks.
- ``crowd_bt``: the Crowd-BT model (Chen, Bennett, Collins-Thompson and Horvitz, "Pairwise ranking
  aggregation in a crowdsourced setting", WSDM 2013) fitted to every pair of a project: a score per item, a
  reliability per annotator, and per observed pair the posterior probability that the chosen candidate really
  is the better one (what exports will carry as ``confidence``).

Both are vectorised over all pairs with numpy (sorts, ``np.bincount`` scatters, batched per-task solves); the
only per-ranking Python is ``prepare``'s pass over the rankings. Target: agreement and Crowd-BT for 1,000,000
rankings of 4 candidates (6,000,000 pairs) within 60 s on 2 cores (``bench/quality.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from lensloop.formats import pairs_from_groups

__all__ = [
    "Agreement",
    "AnnotatorAgreement",
    "PreparedRankings",
    "Reliability",
    "agreement",
    "alpha_from_coincidences",
    "crowd_bt",
    "initial_reliability",
    "pairs_of",
    "prepare",
]

RankingRow = tuple[Hashable, Hashable, Sequence]  # (task_id, annotator_id, ordering)


def pairs_of(ordering: Sequence) -> list[tuple]:
    """The (chosen, rejected, margin) pairs a ranking implies: ``lensloop.formats.pairs_from_groups`` (a bare
    id in the ordering counts as a group of one, as ``annotation.pairs.normalise_ordering`` has it)."""
    return pairs_from_groups([list(g) if isinstance(g, list | tuple) else [g] for g in ordering])


# --------------------------------------------------------------------------------------------------------
# Rankings as flat arrays
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRankings:
    """Rankings flattened into arrays; built by ``prepare``. Sizes: R rankings kept, T tasks, A annotators,
    N items (a task's candidates), C cells (one per ranking and candidate it ranks), P pairs.

    - ``tasks`` (T ids), ``annotators`` (A ids): the ids, in order of first appearance.
    - ``ranking_source`` (R,): each kept ranking's index in the input; ``ranking_task``, ``ranking_annotator`` (R,).
    - ``item_task`` (N,), ``item_local`` (N,): an item's task and its index among the task's candidates
      (``0 … k_t-1``), ``item_candidate`` (N,): its candidate id; items of a task are contiguous.
    - ``cell_ranking``, ``cell_item`` (C,), ``cell_midrank`` (C,): the candidate's rank in that ranking, 1 for
      the best, tied candidates sharing the mean of the places they take (``[[3], [1, 2], [4]]``: 3 → 1,
      1 and 2 → 2.5, 4 → 4).
    - ``pair_ranking``, ``pair_chosen``, ``pair_rejected`` (items), ``pair_margin`` (P,).
    """

    tasks: list
    annotators: list
    ranking_source: np.ndarray
    ranking_task: np.ndarray
    ranking_annotator: np.ndarray
    item_task: np.ndarray
    item_local: np.ndarray
    item_candidate: np.ndarray
    cell_ranking: np.ndarray
    cell_item: np.ndarray
    cell_midrank: np.ndarray
    pair_ranking: np.ndarray
    pair_chosen: np.ndarray
    pair_rejected: np.ndarray
    pair_margin: np.ndarray

    @property
    def pair_task(self) -> np.ndarray:
        return self.ranking_task[self.pair_ranking]

    @property
    def pair_annotator(self) -> np.ndarray:
        return self.ranking_annotator[self.pair_ranking]

    @property
    def max_k(self) -> int:
        return int(self.item_local.max()) + 1 if len(self.item_local) else 0


def _factorise(values: Iterable[Hashable]) -> tuple[np.ndarray, list]:
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64)
    return codes, list(index)


def _as_array(values: list) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return np.asarray(values, dtype=object)


def prepare(rankings: Sequence[RankingRow]) -> PreparedRankings:
    """Flatten ``rankings`` ((task_id, annotator_id, ordering), ordering best first) into the arrays of
    ``PreparedRankings``; a second ranking of a task by the same annotator replaces the first. The pairs are
    ``pairs_of`` each ordering."""
    rankings = list(rankings)
    task_code, tasks = _factorise(r[0] for r in rankings)
    annotator_code, annotators = _factorise(r[1] for r in rankings)
    # keep the last ranking of each (task, annotator)
    key = task_code * max(len(annotators), 1) + annotator_code
    _, last_from_end = np.unique(key[::-1], return_index=True)
    keep = np.sort(len(key) - 1 - last_from_end) if len(key) else np.zeros(0, dtype=np.int64)

    pair_lists, cands, mids, n_cells = [], [], [], []
    for i in keep.tolist():
        groups = [list(g) if isinstance(g, list | tuple) else [g] for g in rankings[i][2]]
        pair_lists.append(pairs_from_groups(groups))
        place = 0
        for g in groups:
            mid = place + (len(g) + 1) / 2
            cands.extend(g)
            mids.extend([mid] * len(g))
            place += len(g)
        n_cells.append(place)
    n_pairs = np.fromiter(map(len, pair_lists), dtype=np.int64, count=len(pair_lists))
    flat = list(chain.from_iterable(chain.from_iterable(pair_lists)))
    flat_arr = _as_array(flat).reshape(-1, 3) if flat else np.zeros((0, 3), dtype=np.int64)
    cell_cand = _as_array(cands)

    R = len(keep)
    ranking_task = task_code[keep]
    cell_ranking = np.repeat(np.arange(R), n_cells)
    pair_ranking = np.repeat(np.arange(R), n_pairs)
    # items: distinct (task, candidate), contiguous per task
    uniq_cand, cand_code = np.unique(cell_cand, return_inverse=True)
    n_cand = max(len(uniq_cand), 1)
    cell_key = ranking_task[cell_ranking] * n_cand + cand_code.reshape(-1)
    item_key, cell_item = np.unique(cell_key, return_inverse=True)
    item_task = item_key // n_cand
    item_local = np.arange(len(item_key)) - np.searchsorted(item_task, item_task, side="left")

    def item_of(candidates: np.ndarray) -> np.ndarray:
        code = np.searchsorted(uniq_cand, candidates)
        return np.searchsorted(item_key, ranking_task[pair_ranking] * n_cand + code)

    return PreparedRankings(
        tasks=tasks, annotators=annotators,
        ranking_source=keep, ranking_task=ranking_task, ranking_annotator=annotator_code[keep],
        item_task=item_task, item_local=item_local, item_candidate=uniq_cand[item_key % n_cand],
        cell_ranking=cell_ranking, cell_item=cell_item.reshape(-1), cell_midrank=np.asarray(mids, dtype=np.float64),
        pair_ranking=pair_ranking, pair_chosen=item_of(flat_arr[:, 0]), pair_rejected=item_of(flat_arr[:, 1]),
        pair_margin=flat_arr[:, 2].astype(np.int64),
    )


def _prepared(rankings: Sequence[RankingRow] | PreparedRankings) -> PreparedRankings:
    return rankings if isinstance(rankings, PreparedRankings) else prepare(rankings)


# --------------------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorAgreement:
    """One annotator's comparisons with the other annotators of the same tasks (see ``Agreement``)."""

    annotator: Hashable
    tasks: int
    agree: int
    disagree: int
    tie_one: int
    tie_both: int
    pairwise: float  # agree / (agree + disagree); nan without a strict comparison
    pairwise_ci: tuple[float, float]


@dataclass(frozen=True)
class Agreement:
    """Agreement among the rankings of tasks ranked by ≥ 2 annotators.

    A *comparison* is two rankings of one task by different annotators and one unordered pair {i, j} of the
    task's candidates. It is

    - ``agree``: both order i and j strictly, the same way;
    - ``disagree``: both order them strictly, opposite ways;
    - ``tie_one``: one ties i and j, the other orders them strictly;
    - ``tie_both``: both tie them.

    Ties are kept out of ``pairwise`` = agree / (agree + disagree), the agreement on the induced pairs (the
    pairs training learns from; a tie induces none), and counted apart so that an annotator who ties much shows
    it. Krippendorff's alpha (ordinal) uses the ties: each candidate of a task is a unit, each ranking of the
    task gives it a value, its mid-rank (tied candidates share the mean of their places), and alpha compares
    the disagreement observed within units with the disagreement expected by chance from all values
    (1 = perfect agreement, 0 = chance, < 0 = systematic disagreement).

    ``*_ci`` are bootstrap 95% percentile intervals over ``n_boot`` resamples of the tasks (with replacement;
    every figure of a resample is computed from the same resampled tasks). ``per_annotator`` counts each
    comparison that involves the annotator; the project's counts count each comparison once.
    """

    tasks: int
    rankings: int
    agree: int
    disagree: int
    tie_one: int
    tie_both: int
    pairwise: float
    pairwise_ci: tuple[float, float]
    alpha: float
    alpha_ci: tuple[float, float]
    per_annotator: dict = field(default_factory=dict)  # annotator id → AnnotatorAgreement
    n_boot: int = 0


def alpha_from_coincidences(o: np.ndarray) -> np.ndarray:
    """Krippendorff's alpha for the ordinal metric from coincidence matrices ``o`` of shape (..., V, V)
    (values sorted in their order; a batch of matrices gives a batch of alphas).

    With n_c = Σ_k o_ck the value totals and n = Σ_c n_c (Krippendorff, *Content Analysis*, 2004, §11.3;
    "Computing Krippendorff's alpha-reliability", 2011):

        δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k) / 2)²               (ordinal metric)
        α = 1 − (n − 1) Σ_ck o_ck δ²_ck / Σ_ck n_c n_k δ²_ck

    nan where the expected disagreement is 0 (a single value used).
    """
    o = np.asarray(o, dtype=np.float64)
    n_c = o.sum(axis=-1)
    n = n_c.sum(axis=-1)
    cum = np.cumsum(n_c, axis=-1)
    # Σ_{g=c..k} n_g for c ≤ k is cum[k] − cum[c] + n_c[c]; δ² is symmetric
    between = cum[..., None, :] - cum[..., :, None] + n_c[..., :, None]
    between = np.where(np.triu(np.ones(o.shape[-2:], dtype=bool)), between, np.swapaxes(between, -1, -2))
    delta2 = (between - (n_c[..., :, None] + n_c[..., None, :]) / 2) ** 2
    observed = (o * delta2).sum(axis=(-1, -2))
    expected = (n_c[..., :, None] * n_c[..., None, :] * delta2).sum(axis=(-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected > 0, 1 - (n - 1) * observed / expected, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _interval(replicates: np.ndarray) -> np.ndarray:
    """2.5% and 97.5% percentiles along the first axis, ignoring nan (shape (2, ...))."""
    if replicates.shape[0] == 0:
        return np.full((2, *replicates.shape[1:]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns: an annotator without comparisons
        return np.nanpercentile(replicates, [2.5, 97.5], axis=0)


def _votes(chosen: np.ndarray, rejected: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs as votes on unordered item pairs {lo, hi}: ``order`` sorts the votes by pair, ``group_of`` (P,)
    numbers each vote's pair 0 … G−1 (in sorted order), ``plus`` (P,) is True where the vote says lo ≻ hi."""
    lo, hi = np.minimum(chosen, rejected), np.maximum(chosen, rejected)
    key = lo * n_items + hi
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    step = np.zeros(len(key_s), dtype=np.int64)
    step[1:] = key_s[1:] != key_s[:-1]
    group_of = np.empty(len(key_s), dtype=np.int64)
    group_of[order] = np.cumsum(step)
    return order, group_of, chosen < rejected


def agreement(rankings: Sequence[RankingRow] | PreparedRankings, *, n_boot: int = 1000, seed: int = 0,
              chunk: int = 25) -> Agreement:
    """Pairwise agreement (per project and per annotator) and ordinal Krippendorff's alpha (per project) of the
    tasks with ≥ 2 rankings, with bootstrap 95% intervals over ``n_boot`` resamples of those tasks
    (``chunk`` resamples at a time bound the memory: about ``chunk`` × T floats). See ``Agreement``.

    Computation, all vectorised: each strict pair a ranking implies is one vote on the unordered candidate
    pair {i, j} (its key), +1 or −1 by its direction. Sorting the votes by key gives per key n₊ and n₋; a vote
    agrees with the n_same − 1 other votes of its direction and disagrees with the n_opp others; the R_t − n₊ − n₋
    rankings of the task without a vote tied the pair. Summed per ranking this gives its counts
    (``tie_one`` and ``tie_both`` through the task's totals); per annotator and per project they are sums (the
    project halves them: every comparison was counted from both sides).

    Alpha: per task the coincidence matrix over mid-rank values (V = 2·k_max − 1 of them: 1, 1.5, …, k_max),
    o_t[c, k] = Σ_units Σ_{ordered pairs of values c, k from different rankings} 1 / (m_u − 1), m_u the
    unit's number of values; the project's matrix is Σ_t o_t and a resample's is Σ_t w_t o_t with w_t how
    often task t was drawn. Checked against the ``krippendorff`` package in the tests.
    """
    d = _prepared(rankings)
    T_all = len(d.tasks)
    per_task = np.bincount(d.ranking_task, minlength=T_all)
    multi = per_task >= 2
    rank_in = multi[d.ranking_task]
    # index the multi-ranked tasks 0 … T−1
    task_new = np.cumsum(multi) - 1
    T = int(multi.sum())
    R = len(d.ranking_task)
    r_task = task_new[d.ranking_task]
    R_t = per_task[d.ranking_task].astype(np.float64)  # per ranking: how many rankings its task has

    # --- pairwise counts per ranking
    pr = d.pair_ranking
    use = rank_in[pr]
    pr = pr[use]
    ch, rj = d.pair_chosen[use], d.pair_rejected[use]
    N = max(len(d.item_task), 1)
    _, group_of, plus = _votes(ch, rj, N)
    starts = np.zeros(int(group_of.max()) + 1 if len(group_of) else 0)
    n_plus = np.bincount(group_of, weights=plus, minlength=len(starts))
    n_all = np.bincount(group_of, minlength=len(starts)).astype(np.float64)
    same = np.where(plus, n_plus[group_of], n_all[group_of] - n_plus[group_of])
    agree_p = same - 1
    disagree_p = n_all[group_of] - same
    strict_p = n_all[group_of]  # votes on this pair, this one included
    Rt_p = R_t[pr]
    agree_r = np.bincount(pr, weights=agree_p, minlength=R)
    disagree_r = np.bincount(pr, weights=disagree_p, minlength=R)
    strict_vs_tie = np.bincount(pr, weights=Rt_p - strict_p, minlength=R)
    sum_strict_mine = np.bincount(pr, weights=strict_p, minlength=R)
    npairs_r = np.bincount(pr, minlength=R).astype(np.float64)
    # per task: S_t strict votes in all, the number of candidate pairs k_t (k_t − 1) / 2
    S_t = np.bincount(d.ranking_task[pr], minlength=T_all).astype(np.float64)
    k_t = np.bincount(d.item_task, minlength=T_all).astype(np.float64)
    cand_pairs_r = (k_t * (k_t - 1) / 2)[d.ranking_task]
    tie_vs_strict = S_t[d.ranking_task] - sum_strict_mine  # this ranking ties, another orders strictly
    tie_both_r = (cand_pairs_r - npairs_r) * (R_t - 1) - tie_vs_strict
    tie_one_r = strict_vs_tie + tie_vs_strict
    counts_r = np.stack([agree_r, disagree_r, tie_one_r, tie_both_r], axis=1)
    counts_r[~rank_in] = 0

    # per task sums (multi-ranked tasks only) and per annotator sums
    rows = np.flatnonzero(rank_in)
    task_counts = np.zeros((T, 4))
    for j in range(4):
        task_counts[:, j] = np.bincount(r_task[rows], weights=counts_r[rows, j], minlength=T)
    A = len(d.annotators)
    ann = d.ranking_annotator[rows]
    ann_counts = np.stack([np.bincount(ann, weights=counts_r[rows, j], minlength=A) for j in range(4)], axis=1)
    ann_tasks = np.bincount(ann, minlength=A)

    # --- alpha: per-task coincidences over mid-rank values
    k_max = d.max_k
    V = max(2 * k_max - 1, 1)
    cell_in = rank_in[d.cell_ranking]
    c_item = d.cell_item[cell_in]
    c_val = np.rint(2 * d.cell_midrank[cell_in] - 2).astype(np.int64)
    c_order = np.argsort(c_item, kind="stable")
    c_item, c_val = c_item[c_order], c_val[c_order]
    c_task = task_new[d.item_task[c_item]]
    m_u = np.bincount(c_item, minlength=N).astype(np.float64)
    tri_i, tri_j = np.triu_indices(V)
    tri_code = np.full((V, V), -1, dtype=np.int64)
    tri_code[tri_i, tri_j] = np.arange(len(tri_i))
    S = len(tri_i)
    tri_counts = np.zeros(T * S)
    max_m = int(m_u.max()) if len(m_u) else 0
    for off in range(1, max_m):
        same_unit = c_item[:-off] == c_item[off:]
        if not same_unit.any():
            break
        a, b = c_val[:-off][same_unit], c_val[off:][same_unit]
        w = 1.0 / (m_u[c_item[:-off][same_unit]] - 1)
        code = tri_code[np.minimum(a, b), np.maximum(a, b)]
        tri_counts += np.bincount(c_task[:-off][same_unit] * S + code, weights=w, minlength=T * S)
    tri_counts = tri_counts.reshape(T, S)

    def coincidences(tri: np.ndarray) -> np.ndarray:
        """(…, S) unordered-pair sums → (…, V, V) coincidence matrices (o_ck = o_kc, each unordered pair of
        values counted both ways)."""
        o = np.zeros((*tri.shape[:-1], V, V))
        o[..., tri_i, tri_j] += tri
        o[..., tri_j, tri_i] += tri
        return o

    total = task_counts.sum(axis=0)
    agree, disagree, tie_one, tie_both = total / 2
    pairwise = float(_ratio(np.array(agree), np.array(agree + disagree)))
    alpha = float(alpha_from_coincidences(coincidences(tri_counts.sum(axis=0)))) if T else math.nan
    ann_pairwise = _ratio(ann_counts[:, 0], ann_counts[:, 0] + ann_counts[:, 1])

    # --- bootstrap over tasks: every statistic is linear in task weights until the final ratio
    rng = np.random.default_rng(seed)
    boots_pairwise, boots_alpha, boots_ann = [], [], []
    if T and n_boot > 0:
        stats = np.concatenate([task_counts[:, :2], tri_counts], axis=1).astype(np.float32)
        by_ann = np.argsort(ann, kind="stable")
        seg_ann = ann[by_ann]
        seg_starts = np.flatnonzero(np.r_[True, seg_ann[1:] != seg_ann[:-1]]) if len(seg_ann) else np.zeros(0, int)
        seg_rows_task = r_task[rows][by_ann]
        seg_agree = counts_r[rows, 0][by_ann].astype(np.float32)
        seg_disagree = counts_r[rows, 1][by_ann].astype(np.float32)
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            draws = rng.integers(0, T, size=(b, T))
            weights = np.bincount((draws + np.arange(b)[:, None] * T).ravel(), minlength=b * T)
            weights = weights.reshape(b, T).astype(np.float32)
            sums = weights @ stats  # (b, 2 + S)
            boots_pairwise.append(_ratio(sums[:, 0].astype(np.float64), (sums[:, 0] + sums[:, 1]).astype(np.float64)))
            boots_alpha.append(alpha_from_coincidences(coincidences(sums[:, 2:].astype(np.float64))))
            if len(seg_starts):
                w_rows = weights[:, seg_rows_task]
                ag = np.add.reduceat(w_rows * seg_agree, seg_starts, axis=1)
                dis = np.add.reduceat(w_rows * seg_disagree, seg_starts, axis=1)
                per = np.full((b, A), np.nan)
                per[:, seg_ann[seg_starts]] = _ratio(ag.astype(np.float64), (ag + dis).astype(np.float64))
                boots_ann.append(per)
    pw_ci = _interval(np.concatenate(boots_pairwise)) if boots_pairwise else np.full(2, np.nan)
    al_ci = _interval(np.concatenate(boots_alpha)) if boots_alpha else np.full(2, np.nan)
    ann_ci = _interval(np.concatenate(boots_ann)) if boots_ann else np.full((2, A), np.nan)

    per_annotator = {
        d.annotators[k]: AnnotatorAgreement(
            annotator=d.annotators[k], tasks=int(ann_tasks[k]),
            agree=round(ann_counts[k, 0]), disagree=round(ann_counts[k, 1]),
            tie_one=round(ann_counts[k, 2]), tie_both=round(ann_counts[k, 3]),
            pairwise=float(ann_pairwise[k]), pairwise_ci=(float(ann_ci[0, k]), float(ann_ci[1, k])),
        )
        for k in range(A) if ann_tasks[k]
    }
    return Agreement(
        tasks=T, rankings=len(rows), agree=round(agree), disagree=round(disagree),
        tie_one=round(tie_one), tie_both=round(tie_both),
        pairwise=pairwise, pairwise_ci=(float(pw_ci[0]), float(pw_ci[1])),
        alpha=alpha, alpha_ci=(float(al_ci[0]), float(al_ci[1])),
        per_annotator=per_annotator, n_boot=n_boot if T else 0,
    )


# --------------------------------------------------------------------------------------------------------
# Crowd-BT
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reliability:
    """A Crowd-BT fit (``crowd_bt``).

    - ``annotators`` (A ids), ``reliability`` (A,): η_k, the probability that annotator k reports the true
      order of a pair; ``pairs`` (A,): how many pairs of k's it rests on.
    - ``tasks`` (T ids); ``item_task`` (N,: index into ``tasks``), ``item_candidate`` (N,), ``scores`` (N,): s_i,
      on the logit scale, comparable within a task only.
    - per observed pair (P,): ``pair_ranking`` (the ranking's index in the input), ``pair_annotator`` (index
      into ``annotators``), ``pair_chosen``, ``pair_rejected`` (candidate ids), ``pair_margin``, ``model_prob``
      = σ(s_c − s_r) and ``confidence`` = P(chosen truly ≻ rejected | this report, the fit) (see ``crowd_bt``).
    - ``iterations``, ``converged``, ``log_posterior`` (the objective at the end).
    """

    annotators: list
    reliability: np.ndarray
    pairs: np.ndarray
    tasks: list
    item_task: np.ndarray
    item_candidate: np.ndarray
    scores: np.ndarray
    pair_ranking: np.ndarray
    pair_annotator: np.ndarray
    pair_chosen: np.ndarray
    pair_rejected: np.ndarray
    pair_margin: np.ndarray
    model_prob: np.ndarray
    confidence: np.ndarray
    iterations: int
    converged: bool
    log_posterior: float

    def by_annotator(self) -> dict:
        """annotator id → reliability η."""
        return dict(zip(self.annotators, self.reliability.tolist(), strict=True))

    def ranked(self) -> list[tuple]:
        """(annotator id, η, pairs), most reliable first."""
        order = np.argsort(-self.reliability, kind="stable")
        return [(self.annotators[k], float(self.reliability[k]), int(self.pairs[k])) for k in order]


def initial_reliability(d: PreparedRankings, *, iterations: int = 50, clip: float = 0.96) -> np.ndarray:
    """A starting point for η (A,) from how often annotators agree with each other, for ``crowd_bt``'s EM.

    EM from a neutral start (every η alike) can settle in a poor local optimum when few annotators share a
    task (overlap 2): the scores of a task's candidates then bend to each of its two rankings, every report
    looks truthful and every η drifts towards 1. The agreement between annotators tells them apart first: if
    k and l report a pair's true order with probabilities η_k and η_l, independently, they agree with
    probability P_kl = η_k η_l + (1 − η_k)(1 − η_l), that is u_k u_l = 2 P_kl − 1 with u = 2η − 1 (the rank-one
    structure of Dalvi, Dasgupta, Kumar and Rastogi, "Aggregating crowdsourced binary ratings", WWW 2013;
    Ghosh, Kale and McAfee, EC 2011). ``u`` is fitted to the observed pairs of annotators by weighted
    alternating least squares, u_k ← Σ_l n_kl M_kl u_l / Σ_l n_kl u_l² with M = 2 P − 1 and n_kl their strict
    comparisons, from u = 1 (so that the annotators who agree with the most others count as the honest side),
    then clipped to ±``clip``. Annotators who share no task with anyone keep u = 0.5 (η = 0.75).
    """
    A = len(d.annotators)
    if not len(d.pair_chosen):
        return np.full(A, 0.75)
    order, group_of, plus = _votes(d.pair_chosen, d.pair_rejected, max(len(d.item_task), 1))
    g_s, ann_s, plus_s = group_of[order], d.pair_annotator[order], plus[order]
    n = np.zeros(A * A)
    agree = np.zeros(A * A)
    off = 1
    while off < len(g_s):
        same = g_s[:-off] == g_s[off:]
        if not same.any():
            break
        a, b = ann_s[:-off][same], ann_s[off:][same]
        both = np.concatenate([a * A + b, b * A + a])
        ok = np.tile(plus_s[:-off][same] == plus_s[off:][same], 2)
        n += np.bincount(both, minlength=A * A)
        agree += np.bincount(both, weights=ok, minlength=A * A)
        off += 1
    n = n.reshape(A, A)
    np.fill_diagonal(n, 0)  # one annotator's two rankings of a task were reduced to one in ``prepare``
    M = 2 * _ratio(agree.reshape(A, A), n) - 1
    M = np.nan_to_num(M)
    u = np.ones(A)
    seen = n.sum(axis=1) > 0
    for _ in range(iterations):
        den = n @ (u * u)
        u = np.where(den > 0, (n * M) @ u / np.where(den > 0, den, 1), u)
    u = np.where(seen, np.clip(u, -clip, clip), 0.5)
    return (1 + u) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def crowd_bt(rankings: Sequence[RankingRow] | PreparedRankings, *, score_sd: float = 1.0,
             eta_prior: tuple[float, float] = (4.0, 2.0), max_iter: int = 50, tol: float = 1e-5) -> Reliability:
    """Fit Crowd-BT (Chen, Bennett, Collins-Thompson and Horvitz, WSDM 2013, eq. 1) to every pair the rankings
    imply. Each report of annotator k on candidates i, j of one task follows

        P(k reports i ≻ j) = η_k σ(s_i − s_j) + (1 − η_k) σ(s_j − s_i)

    s_i the item scores (N,), η_k ∈ [0, 1] the annotators' reliabilities (A,): a careful annotator has η near
    1, a random one 0.5, an adversarial one (who reverses the order) below 0.5. Ties give no pair and so no
    evidence; a pair's margin is not used (each pair counts once).

    One change to the paper's joint model, needed at low overlap: the true order of a candidate pair {i, j} is
    one latent variable z_ij ~ Bernoulli(σ(s_i − s_j)) shared by every annotator who judges that pair, each
    reporting it with probability η_k and its reverse otherwise, independently (the Dawid–Skene view of a pair
    as one item with one truth). Each single report still follows eq. 1 above; Chen et al. draw a fresh truth
    per report instead, and with that model the MAP fit degenerates when each task has two rankings: a task's
    scores bend to each of its rankings, every report looks truthful and every η (a random annotator's too)
    drifts to 0 or 1 (seen on the synthetic mix of the tests).

    Fit: expectation–maximisation for z (marginalised) and MAP for s and η, with priors

    - s_i ~ N(0, ``score_sd``²), sd 1: scores are identified only up to a shift per task and pull apart without
      bound where the votes are unanimous; the Gaussian keeps them finite and keeps the prior of a pair's
      truth (σ(s_i − s_j)) from overruling its votes (two items 2 sd apart: σ(2) ≈ 0.88);
    - η_k ~ Beta(a, b) = Beta(``eta_prior``), by default Beta(4, 2): worth about four pairs (three right, one
      wrong), mode 0.75; weak (an annotator's hundreds of pairs outweigh it), it keeps an annotator with few
      pairs near 0.75 and leans the model's symmetry (s → −s with η → 1 − η) towards honest annotators.

    With G the distinct candidate pairs that someone ordered strictly, votes v (the observed pairs, P) on
    them, sign_v = +1 where v says lo ≻ hi (lo, hi the pair's two items) and d_g = s_lo − s_hi:

    - E-step: π_g = P(z_g: lo ≻ hi | votes, s, η) = σ(d_g + Σ_{v on g} sign_v logit η_{k(v)}); a vote is
      right with probability q_v = π_g where it says lo ≻ hi, 1 − π_g otherwise.
    - M-step for η (closed form): η_k = (Σ_{v of k} q_v + a − 1) / (n_k + a + b − 2).
    - M-step for s: Σ_g [π_g log σ(d_g) + (1 − π_g) log σ(−d_g)] − ‖s‖² / (2 sd²) is concave and its Hessian
      block-diagonal, one k_t × k_t block per task (only a task's candidates are compared): one Newton step per
      iteration, all blocks solved in one batched ``np.linalg.solve`` of shape (T, k_max, k_max) (a generalised
      EM step). Gradient g_i = Σ_{g: lo=i} (π_g − σ(d_g)) − Σ_{g: hi=i} (…) − s_i / sd²; curvature
      w_g = σ(d_g) σ(−d_g) on the pair's 2×2 entries plus 1 / sd² on the diagonal.

    Starts at s = 0 and η from the agreement between annotators (``initial_reliability``, a moment estimate);
    stops when an iteration raised the log posterior by less than ``tol`` per vote (default 1e-5), or after
    ``max_iter`` iterations (``converged`` says which). The tolerance is a deliberate early stop: when each
    pair is judged by two annotators the MAP is degenerate. One annotator can be declared nearly infallible
    (η → 0 or 1) and every conflict it is part of charged to its partners, through the pair's latent truth;
    the log posterior keeps rising by ~1e-6 per vote per iteration along that path, and an adversarial
    annotator whose share of true reports is 0.05 drifts to η = 0.005 in 50 iterations on 5,000 tasks
    (5 with K = 4). The first iterations, which fit the scores and move η by < 0.01 from the start, gain
    ~3e-4 per vote; the stop comes after them. Cost per iteration: a few gathers and ``np.bincount`` scatters
    over the P votes and G pairs, and the batched solve.

    Output per observed pair (chosen c, rejected r): ``confidence`` = P(c truly ≻ r | every vote on the pair,
    s, η), the posterior π of the pair's truth at the fit (a vote of an η = 0.5 annotator changes nothing, one
    of an η < 0.5 annotator counts for the other direction), and ``model_prob`` = σ(s_c − s_r), what the
    scores say.
    """
    d = _prepared(rankings)
    a0, b0 = eta_prior
    if a0 < 1 or b0 < 1:
        raise ValueError("eta_prior needs a, b ≥ 1 (a MAP estimate inside [0, 1])")
    A, N, T = len(d.annotators), len(d.item_task), len(d.tasks)
    K = max(d.max_k, 1)
    k_of = d.pair_annotator
    n_k = np.bincount(k_of, minlength=A).astype(np.float64)
    # votes → distinct candidate pairs
    order, group_of, plus = _votes(d.pair_chosen, d.pair_rejected, max(N, 1))
    G = int(group_of.max()) + 1 if len(group_of) else 0
    first = np.zeros(G, dtype=np.int64)
    first[group_of[order][::-1]] = order[::-1]  # one vote of each pair
    lo = np.minimum(d.pair_chosen, d.pair_rejected)[first]
    hi = np.maximum(d.pair_chosen, d.pair_rejected)[first]
    sign = np.where(plus, 1.0, -1.0)
    ll, lh = d.item_local[lo], d.item_local[hi]
    base = d.item_task[lo] * (K * K)
    pos_ll, pos_hh = base + ll * K + ll, base + lh * K + lh
    pos_lh, pos_hl = base + ll * K + lh, base + lh * K + ll
    item_flat = d.item_task * K + d.item_local
    prior_prec = 1.0 / score_sd**2
    diag = np.arange(K)

    def log_posterior(s: np.ndarray, eta: np.ndarray, dg: np.ndarray, ell: np.ndarray) -> float:
        """Σ_g log P(votes on g | s, η) + log priors (up to constants). With ℓ_g = Σ_v sign_v logit η and
        Σ_v log(η(1 − η)) = Σ_k n_k log(η_k (1 − η_k)): P(votes | z) = exp((Σ_v log(η(1 − η)) ± ℓ_g) / 2)."""
        votes = 0.5 * float(n_k @ (np.log(eta) + np.log1p(-eta)))
        pairs = float(np.logaddexp(_log_sigmoid(dg) + ell / 2, _log_sigmoid(-dg) - ell / 2).sum())
        priors = -0.5 * prior_prec * float(s @ s) + float(((a0 - 1) * np.log(eta) + (b0 - 1) * np.log1p(-eta)).sum())
        return votes + pairs + priors

    s = np.zeros(N)
    eta = initial_reliability(d)
    converged = False
    last = -math.inf
    it = 0
    while True:
        dg = s[lo] - s[hi]
        logit = np.log(eta) - np.log1p(-eta)
        ell = np.bincount(group_of, weights=sign * logit[k_of], minlength=G)
        pi = _sigmoid(dg + ell)  # E-step
        log_post = log_posterior(s, eta, dg, ell)
        if log_post - last < tol * max(len(k_of), 1):
            converged = True
            break
        if it == max_iter:
            break
        it += 1
        last = log_post
        q = np.where(plus, pi[group_of], 1 - pi[group_of])
        eta = (np.bincount(k_of, weights=q, minlength=A) + a0 - 1) / (n_k + a0 + b0 - 2)
        p = _sigmoid(dg)
        g = pi - p
        grad = np.bincount(lo, weights=g, minlength=N) - np.bincount(hi, weights=g, minlength=N) - s * prior_prec
        w = p * (1 - p)
        H = np.zeros(T * K * K)
        H += np.bincount(pos_ll, weights=w, minlength=T * K * K)
        H += np.bincount(pos_hh, weights=w, minlength=T * K * K)
        H -= np.bincount(pos_lh, weights=w, minlength=T * K * K)
        H -= np.bincount(pos_hl, weights=w, minlength=T * K * K)
        H = H.reshape(T, K, K)
        H[:, diag, diag] += prior_prec  # padded slots of short tasks hold only the prior: their step is 0
        G_ = np.zeros(T * K)
        G_[item_flat] = grad
        if T:
            s = s + np.linalg.solve(H, G_.reshape(T, K, 1)).reshape(T * K)[item_flat]

    confidence = np.where(plus, pi[group_of], 1 - pi[group_of])
    model_prob = _sigmoid(np.where(plus, dg[group_of], -dg[group_of]))
    return Reliability(
        annotators=d.annotators, reliability=eta, pairs=n_k.astype(np.int64),
        tasks=d.tasks, item_task=d.item_task, item_candidate=d.item_candidate, scores=s,
        pair_ranking=d.ranking_source[d.pair_ranking], pair_annotator=k_of,
        pair_chosen=d.item_candidate[d.pair_chosen], pair_rejected=d.item_candidate[d.pair_rejected],
        pair_margin=d.pair_margin, model_prob=model_prob, confidence=confidence,
        iterations=it, converged=converged, log_posterior=log_post,
    )
