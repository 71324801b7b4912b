"""Policy optimisation side by side on the demo world with the ground-truth reward: our PPO vs TRL's GRPO
vs TRL's RLOO. Held-out reward against steps and against training wall time (evaluation pauses
excluded), samples per second, peak memory (max RSS of each run's process). Prints a table, writes a
PNG plot and a JSON of the curves.

    .venv/bin/python bench/policy.py [--model PATH] [--steps-ppo 14 --steps-group 28] [--out docs/]

Each method runs as `python -m rlhf.engine <kind>` in its own process (so peak memory is its own), on the
same model, prompt set, held-out prompts, reward (`demo_reward`), LoRA and answer length; the answers
sampled per optimiser step differ by design (PPO: batch_size rollouts, ppo_epochs × minibatches per
iteration; GRPO/RLOO: batch_size answers = prompts × K per step).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNNER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
          "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def run_method(kind: str, cfg: dict, work: Path) -> dict:
    cfg_path = work / f"{kind}.json"
    cfg_path.write_text(json.dumps(cfg))
    run_dir = work / kind
    proc = subprocess.run([sys.executable, "-c", RUNNER, sys.executable, "-m", "rlhf.engine", kind, "--config",
                           str(cfg_path), "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    rss = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    result = json.loads((run_dir / "result.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["train_seconds"], r["eval/reward_mean"], r.get("eval/reward_sampled"))
             for r in rows if r.get("eval/reward_mean") is not None]
    return {"kind": kind, "result": result, "curve": curve, "peak_rss_mb": rss / 1024}


def time_to_reach(curve, target: float, column: int = 2) -> float | None:
    """Training seconds at the first evaluation whose reward reaches `target` (None if never)."""
    for point in curve:
        if point[column] is not None and point[column] >= target - 1e-9:
            return point[1]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model folder (default: the tiny test build of the demo model)")
    ap.add_argument("--steps-ppo", type=int, default=14)
    ap.add_argument("--steps-group", type=int, default=28)
    ap.add_argument("--eval-prompts", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()

    from rlhf.engine.config import BuildDemoConfig, data_dir
    from rlhf.engine.demo.annotators import write_demo_preferences
    from rlhf.engine.demo.build import ensure_demo_model

    model = args.model or str(ensure_demo_model(BuildDemoConfig(steps=800, train_images=2000, eval_images=20,
                                                                warmup_steps=20), data_dir()))
    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    data = write_demo_preferences(work / "data", 240, seed=3, k=4)
    common = {"model": {"path": model, "device": "cpu"}, "prompts_file": str(data["prompts"]),
              "verifiable_reward": "demo_reward", "eval_prompts": args.eval_prompts, "max_new_tokens": 20,
              "seed": 1, "threads": 2}
    configs = {
        "ppo": {**common, "steps": args.steps_ppo, "batch_size": 16, "num_mini_batches": 2, "ppo_epochs": 2,
                "eval_every": max(1, args.steps_ppo // 4)},
        "grpo": {**common, "steps": args.steps_group, "batch_size": 16, "num_generations": 4,
                 "eval_every": max(1, args.steps_group // 4)},
        "rloo": {**common, "steps": args.steps_group, "batch_size": 16, "num_generations": 4,
                 "eval_every": max(1, args.steps_group // 4)},
    }
    runs = {kind: run_method(kind, cfg, work) for kind, cfg in configs.items()}

    grpo_final = runs["grpo"]["curve"][-1]
    print("| method | steps | answers / step | train s | samples/s | peak RSS MB | held-out reward start → end "
          "(greedy) | sampled start → end | s to reach GRPO's final greedy reward |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for kind, r in runs.items():
        c, res = r["curve"], r["result"]
        reach = time_to_reach(c, grpo_final[2])
        print(f"| {kind} | {res['steps']} | 16 | {res['train_seconds']:.0f} | {res['samples_per_second']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {c[0][2]:.3f} → {c[-1][2]:.3f} | {c[0][3]:.3f} → {c[-1][3]:.3f} | "
              f"{'never' if reach is None else f'{reach:.0f}'} |")
    ppo_reach = time_to_reach(runs["ppo"]["curve"], grpo_final[2])
    ratio = None if ppo_reach is None else ppo_reach / max(grpo_final[1], 1e-9)
    mem_ratio = runs["ppo"]["peak_rss_mb"] / runs["grpo"]["peak_rss_mb"]
    print(f"\nPPO/GRPO wall time to GRPO's final greedy reward: {'not reached' if ratio is None else f'{ratio:.2f}'}; "
          f"peak memory PPO/GRPO: {mem_ratio:.2f}")

    out = Path(args.out)
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "policy.json").write_text(json.dumps(
        {k: {"curve": v["curve"], "peak_rss_mb": v["peak_rss_mb"], "result": v["result"]} for k, v in runs.items()},
        indent=1, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind, r in runs.items():
        steps = [p[0] for p in r["curve"]]
        secs = [p[1] for p in r["curve"]]
        for col, style in ((2, "-o"), (3, "--")):
            ys = [p[col] for p in r["curve"]]
            label = f"{kind} ({'greedy' if col == 2 else 'sampled'})"
            axes[0].plot(steps, ys, style, label=label, markersize=3)
            axes[1].plot(secs, ys, style, label=label, markersize=3)
    axes[0].set_xlabel("optimiser step (PPO: iteration)")
    axes[1].set_xlabel("training wall time, s (eval excluded)")
    for ax in axes:
        ax.set_ylabel("held-out demo_reward")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "policy_benchmark.png", dpi=110)
    print(f"plot: {out / 'policy_benchmark.png'}")


if __name__ == "__main__":
    main()
