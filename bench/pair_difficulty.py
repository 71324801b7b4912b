"""How hard a loop's held-out pairs are: the share of them by the difference in true reward (the demo world's
verifiable reward) between the two answers, for the last round of a bench/loop.py run.

    .venv/bin/python bench/pair_difficulty.py /tmp/bench-loop-XXXX --arm ppo --seed 0

bench/loop.py prints its work folder at its start; the pairs are the last round's held-out preference records
(`runs/round-<id>/1-export/heldout/preferences.jsonl`), their ground truth the scenes' manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BINS = (0.1, 0.2, 0.35)  # < 0.1; 0.1–0.2 (one attribute word of one object); 0.2–0.35; ≥ 0.35


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", help="a bench/loop.py work folder")
    ap.add_argument("--arm", default="ppo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from rlhf.engine.demo.annotators import demo_scores

    work = Path(args.work)
    scenes = work / f"scenes-{args.seed}"
    truth = {}
    for line in (scenes / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth[hashlib.sha256((scenes / row["image"]).read_bytes()).hexdigest()] = row["ground_truth"]
    rounds = sorted((work / f"{args.arm}-{args.seed}/var/data/runs").glob("round-*"), key=lambda p: int(p.name[6:]))
    counts = [0] * (len(BINS) + 1)
    for line in (rounds[-1] / "1-export/heldout/preferences.jsonl").read_text().splitlines():
        pair = json.loads(line)
        chosen, rejected = demo_scores(pair["prompt"], [pair["chosen"], pair["rejected"]],
                                       truth[Path(pair["images"][0]).stem])
        counts[sum(abs(chosen - rejected) >= edge for edge in BINS)] += 1
    n = sum(counts)
    labels = [f"< {BINS[0]}"] + [f"{a}–{b}" for a, b in itertools.pairwise(BINS)] + [f"≥ {BINS[-1]}"]
    print(f"{rounds[-1].name}: {n} held-out pairs; by difference in true reward: "
          + ", ".join(f"{label} {c / n:.1%}" for label, c in zip(labels, counts, strict=True)))


if __name__ == "__main__":
    main()
