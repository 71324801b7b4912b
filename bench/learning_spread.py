"""The spread of the learning tests over seeds: what each threshold in tests/ is set from.

Runs each learning test once per seed (``LENSLOOP_LEARNING_SEED``), collects the figures the tests record
(tests/learning.py) and prints, per test and figure, the mean, standard deviation, minimum and maximum, and
the margin of the worst seed over the test's threshold when the test states one.

    .venv/bin/python bench/learning_spread.py --seeds 10                    # every learning test
    .venv/bin/python bench/learning_spread.py --seeds 10 -k ppo --jobs 2    # two seeds at a time

Run it on a quiet machine and under load (for example beside `stress --cpu 2`, or with --jobs 2 on 2
cores): a threshold must hold in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEARNING_TESTS = [
    "tests/engine/test_ppo.py::test_ppo_raises_the_held_out_reward_with_bounded_kl",
    "tests/engine/test_trl_policy.py::test_grpo_raises_the_held_out_reward",
    "tests/engine/test_trl_policy.py::test_rloo_raises_the_held_out_reward",
    "tests/engine/test_trl_policy.py::test_dpo_raises_the_preference_margin_on_held_out_pairs",
    "tests/engine/test_reward_model.py::test_reward_model_learns_ground_truth_preferences",
    "tests/engine/test_reward_model.py::test_confidence_weighting_learns_through_reversed_pairs",
    "tests/engine/test_accelerate.py::test_two_processes_match_one_process_within_noise",
]


def run_one(test: str, seed: int, log: Path, cache: Path) -> tuple[str, int, int]:
    env = {**os.environ, "LENSLOOP_LEARNING_SEED": str(seed), "LENSLOOP_LEARNING_LOG": str(log),
           "LENSLOOP_TEST_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "-x"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    status = "passed" if proc.returncode == 0 else "FAILED"
    print(f"  seed {seed:2d} {status}: {test.split('::')[-1]}", flush=True)
    if proc.returncode:
        print("\n".join(proc.stdout.splitlines()[-15:]), flush=True)
    return test, seed, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("-k", default="", help="only the learning tests whose id contains this")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (2 on 2 cores measures under load)")
    ap.add_argument("--out", default="", help="JSONL file to keep the raw figures in")
    args = ap.parse_args()
    tests = [t for t in LEARNING_TESTS if args.k in t]
    log = Path(args.out) if args.out else Path(tempfile.mkstemp(suffix=".jsonl")[1])
    cache = Path(tempfile.mkdtemp(prefix="lensloop-spread-"))
    jobs = [(t, s) for t in tests for s in range(args.first_seed, args.first_seed + args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda ts: run_one(ts[0], ts[1], log, cache), jobs))
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    print(f"\n{len(results)} runs, {sum(r[2] != 0 for r in results)} failed; raw figures in {log}\n")
    for test in tests:
        name = test.split("::")[-1]
        mine = [r for r in rows if r["test"] == name]
        if not mine:
            continue
        print(f"{name} ({len(mine)} seeds)")
        for key in sorted({k for r in mine for k in r} - {"test", "seed"}):
            xs = [r[key] for r in mine if isinstance(r.get(key), int | float)]
            if not xs:
                continue
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            print(f"  {key:40s} mean {statistics.mean(xs):8.4f}  sd {sd:7.4f}  min {min(xs):8.4f}  max {max(xs):8.4f}")


if __name__ == "__main__":
    main()
