"""How hard a loop's held-out pairs are: the share of them by the difference in true reward (the demo world's
verifiable reward) between the two answers, for the last round of a bench/loop.py run.

    .venv/bin/python bench/pair_difficulty.py /tmp/bench-loop-XXXX --arm ppo --seed 0

With `--reward-model CHECKPOINT` (a reward step's `checkpoint` folder) it also says how often that reward model
is right (scores the annotators' chosen answer higher, as the round's own figure) on each share, and by what the
truly better answer changes: the word swapped where the two differ by one word (e.g. `blue→purple` when the better
answer says purple where the worse says blue), else `count`, `more objects` / `fewer objects` (the better answer
lists more / fewer objects: the worse one left one out / made one up) or `several words`.

bench/loop.py prints its work folder at its start; the pairs are the last round's held-out preference records
(`runs/round-<id>/1-export/heldout/preferences.jsonl`), their ground truth the scenes' manifest.
"""

from __future__ import annotations

import argparse
import collections
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
    ap.add_argument("--reward-model", help="a reward model checkpoint to score the pairs with")
    args = ap.parse_args()
    from rlhf.engine.data import read_preferences
    from rlhf.engine.demo.annotators import demo_scores

    work = Path(args.work)
    scenes = work / f"scenes-{args.seed}"
    truth = {}
    for line in (scenes / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth[hashlib.sha256((scenes / row["image"]).read_bytes()).hexdigest()] = row["ground_truth"]
    rounds = sorted((work / f"{args.arm}-{args.seed}/var/data/runs").glob("round-*"), key=lambda p: int(p.name[6:]))
    export = rounds[-1] / "1-export/heldout"
    pairs = read_preferences(export / "preferences.jsonl")
    labels = [f"< {BINS[0]}"] + [f"{a}–{b}" for a, b in itertools.pairwise(BINS)] + [f"≥ {BINS[-1]}"]
    bins, kinds = [], []
    for pair in pairs:
        chosen, rejected = demo_scores(pair["prompt"], [pair["chosen"], pair["rejected"]],
                                       truth[Path(pair["images"][0]).stem])
        bins.append(labels[sum(abs(chosen - rejected) >= edge for edge in BINS)])
        better, worse = (pair["chosen"], pair["rejected"]) if chosen >= rejected else (pair["rejected"], pair["chosen"])
        kinds.append(difference(worse, better))
    right = _right(args.reward_model, pairs) if args.reward_model else None
    print(f"{rounds[-1].name}: {len(pairs)} held-out pairs"
          + (f"; the reward model right on {sum(right) / len(pairs):.3f}" if right else ""))
    _report("difference in true reward", bins, right, order=labels)
    _report("what differs (worse → better)", kinds, right)


def _report(title: str, keys: list[str], right: list[bool] | None, order: list[str] | None = None) -> None:
    counts = collections.Counter(keys)
    print(f"by {title}:")
    for key in order or [k for k, _ in counts.most_common()]:
        line = f"  {key:>24} {counts[key] / len(keys):6.1%}"
        hits = [r for r, k in zip(right or [], keys, strict=False) if k == key]
        print(line + (f"   right {sum(hits) / len(hits):.2f}" if hits else ""))


def difference(worse: str, better: str) -> str:
    """What makes the better answer better, as words: the one word swapped, or the kind of difference."""
    from rlhf.engine.demo import world

    a, b = world.parse_caption(worse), world.parse_caption(better)
    if len(a["objects"]) != len(b["objects"]):
        return "more objects" if len(b["objects"]) > len(a["objects"]) else "fewer objects"
    changed = [(x, y) for oa, ob in zip(a["objects"], b["objects"], strict=True) for x, y in zip(oa, ob, strict=True)
               if x != y]
    if a["count"] != b["count"]:
        changed.append(("count", "count"))
    if not changed:
        return "same words" if worse.split() == better.split() else "word order"
    if len(changed) > 1:
        return "several words"
    return "count" if changed[0][0] == "count" else f"{changed[0][0]}→{changed[0][1]}"


def _right(checkpoint: str, pairs: list[dict]) -> list[bool]:
    """Whether the reward model scores the chosen answer of each pair above the rejected one."""
    from rlhf.engine.reward_model import load_reward_model, score

    rm, processor = load_reward_model(Path(checkpoint), device="cpu")
    rm.eval()
    images = [p["images"] for p in pairs]
    prompts, cache = [p["prompt"] for p in pairs], {}
    chosen = score(rm, processor, images, prompts, [p["chosen"] for p in pairs], image_cache=cache)
    rejected = score(rm, processor, images, prompts, [p["rejected"] for p in pairs], image_cache=cache)
    return (chosen > rejected).tolist()


if __name__ == "__main__":
    main()
