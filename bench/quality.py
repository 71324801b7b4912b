"""Quality-control benchmark: agreement (pairwise, Krippendorff's alpha, bootstrap intervals) and the Crowd-BT
reliability model (``annotation.quality``) on simulated rankings, timed separately.

    .venv/bin/python bench/quality.py [--rankings 1000000] [--k 4] [--overlap 2] [--boot 1000] [--seed 0]

The annotators are the issue's mix: 8 simulated annotators (``rlhf.engine.demo.annotators``), 4 careful,
2 adversarial and 2 random; each task is ranked by ``--overlap`` of them. Prints the figures and the
reliability ranking, and checks the target: every adversarial and random annotator below every careful one
(exit status 1 if not). The target for time: agreement and reliability for 1,000,000 rankings within 60 s
on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIX = {"careful": 4, "adversarial": 2, "random": 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rankings", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--noise", type=float, default=0.1, help="the careful annotators' swap probability")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from annotation import quality
    from rlhf.engine.demo.annotators import kinds_list, simulated_rankings

    kinds = kinds_list(MIX)
    n_tasks = args.rankings // args.overlap
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cpus")
    t0 = time.perf_counter()
    rankings, truth = simulated_rankings(n_tasks, MIX, overlap=args.overlap, k=args.k, seed=args.seed,
                                         noise=args.noise)
    print(f"simulated {len(rankings):,} rankings of {n_tasks:,} tasks (K={args.k}, overlap {args.overlap}, "
          f"{len(kinds)} annotators: {MIX}) in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    prepared = quality.prepare(rankings)
    t_prepare = time.perf_counter() - t0
    print(f"prepare: {len(prepared.pair_chosen):,} pairs, {len(prepared.item_task):,} items in {t_prepare:.1f} s")

    t0 = time.perf_counter()
    ag = quality.agreement(prepared, n_boot=args.boot, seed=args.seed)
    t_agree = time.perf_counter() - t0
    print(f"agreement ({args.boot} bootstrap resamples): {t_agree:.1f} s")
    print(f"  pairwise {ag.pairwise:.4f} [{ag.pairwise_ci[0]:.4f}, {ag.pairwise_ci[1]:.4f}], "
          f"alpha {ag.alpha:.4f} [{ag.alpha_ci[0]:.4f}, {ag.alpha_ci[1]:.4f}], {ag.tasks:,} tasks; "
          f"comparisons: {ag.agree:,} agree, {ag.disagree:,} disagree, {ag.tie_one:,} one tied, {ag.tie_both:,} both")

    t0 = time.perf_counter()
    fit = quality.crowd_bt(prepared)
    t_fit = time.perf_counter() - t0
    print(f"crowd-bt: {t_fit:.1f} s, {fit.iterations} iterations, converged {fit.converged}")

    # pair accuracy against the truth, for the confidence's calibration
    task_ix = np.asarray(prepared.ranking_task[prepared.pair_ranking])
    true_scores = np.asarray(truth)[np.asarray([prepared.tasks[t] for t in range(len(prepared.tasks))])]
    right = true_scores[task_ix, fit.pair_chosen] > true_scores[task_ix, fit.pair_rejected]
    print("  annotator  kind         eta     pairwise agreement [95%]     pairs  truly right")
    for a, eta, n in fit.ranked():
        k = prepared.annotators.index(a)
        mine = fit.pair_annotator == k
        agr = ag.per_annotator[a]
        print(f"  {a:>9}  {kinds[a]:<11} {eta:.3f}   {agr.pairwise:.3f} [{agr.pairwise_ci[0]:.3f}, "
              f"{agr.pairwise_ci[1]:.3f}]   {n:>9,}  {right[mine].mean():.3f}")
    print(f"  mean confidence: pairs truly right {fit.confidence[right].mean():.3f}, "
          f"truly wrong {fit.confidence[~right].mean():.3f}")
    total = t_prepare + t_agree + t_fit
    print(f"total (prepare + agreement + crowd-bt): {total:.1f} s (target ≤ 60 s for 1,000,000 rankings)")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")

    eta = fit.by_annotator()
    careful = [eta[a] for a in eta if kinds[a] == "careful"]
    bad = [eta[a] for a in eta if kinds[a] in ("adversarial", "random")]
    ok = max(bad) < min(careful)
    print(f"target: every adversarial and random annotator below every careful one: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
