"""Policy optimisation side by side on the demo world with the ground-truth reward: our PPO vs TRL's GRPO
vs TRL's RLOO. Held-out reward against steps and against training wall time (evaluation pauses
excluded), samples per second, peak memory (max RSS of each run's process). Prints a table, writes a
PNG plot and a JSON of the curves.

    .venv/bin/python bench/policy.py [--model PATH] [--steps 100] [--threads 1] [--out docs/]

Each method runs as `python -m rlhf.engine <kind>` in its own process (so peak memory is its own), on the
same model, prompt set, held-out prompts (a separate set of 160 scenes), reward (`demo_reward`), LoRA and
answer length, and the same number of sampled answers per step (64: PPO 64 rollouts per iteration with
`ppo_epochs` × minibatch updates; GRPO/RLOO 16 prompts × K = 4 answers per optimiser step).

All three train the same parameters: the engine's default LoRA (q/v projections of the language model) and
`lm_head` in full (`model.lora_modules_to_save: ["lm_head"]`, a trained copy saved with the adapter; with the
adapter disabled the reference is the base). With q/v alone the policy cannot rescale its logits (the final
RMSNorm undoes any change of scale), so no method can sharpen its answer distribution, which is most of what
RL can gain on the tiny demo model; `--qv-only` runs that configuration. (A LoRA *on* `lm_head` would do for
PPO, but TRL's GRPO/RLOO refuse one: they compute log-probabilities from `lm_head.weight` directly; a
trained copy of `lm_head` is what that weight then is.)

The comparison value is the held-out *sampled* reward (4 answers per prompt at T = 1, the quantity the RL
objectives raise); the greedy reward is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNNER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
          "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def run_method(name: str, kind: str, cfg: dict, work: Path) -> dict:
    cfg_path = work / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg))
    run_dir = work / name
    proc = subprocess.run([sys.executable, "-c", RUNNER, sys.executable, "-m", "rlhf.engine", kind, "--config",
                           str(cfg_path), "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rss = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    result = json.loads((run_dir / "result.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["train_seconds"], r["eval/reward_mean"], r.get("eval/reward_sampled"))
             for r in rows if r.get("eval/reward_mean") is not None]
    print(f"{name}: {result['train_seconds']} s, held-out sampled {curve[0][3]:.3f} → {curve[-1][3]:.3f} "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return {"kind": kind, "result": result, "curve": curve, "peak_rss_mb": rss / 1024}


def time_to_reach(curve, target: float, column: int = 3) -> float | None:
    """Training seconds at the first evaluation whose reward reaches `target` (None if never)."""
    for point in curve:
        if point[column] is not None and point[column] >= target - 1e-9:
            return point[1]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="model folder (default: the shipped demo base)")
    ap.add_argument("--steps", type=int, default=100, help="iterations (PPO) / optimiser steps (GRPO, RLOO)")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-prompts", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: the runs are comparable on a "
                    "shared machine)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from <out>/benchmarks/policy.json")
    ap.add_argument("--only", default="ppo,grpo,rloo", help="comma-separated subset of the runs")
    ap.add_argument("--qv-only", action="store_true", help="LoRA on q/v only, lm_head frozen (the engine's default)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    if args.plot_only:
        out = Path(args.out)
        plot(json.loads((out / "benchmarks" / "policy.json").read_text()), out / "policy_benchmark.png")
        return

    from rlhf.engine.demo.annotators import write_demo_preferences
    from rlhf.engine.loading import resolve_model_path

    model = resolve_model_path(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    data = write_demo_preferences(work / "data", 240, seed=3, k=4)
    held = write_demo_preferences(work / "held", args.eval_prompts, seed=11, k=2)
    lora = {"path": model, "device": "cpu"}  # the engine's default LoRA: q/v of the language model
    if not args.qv_only:
        lora["lora_modules_to_save"] = ["lm_head"]  # and lm_head trained in full (see the module docstring)
    common = {"model": lora, "prompts_file": str(data["prompts"]), "eval_file": str(held["prompts"]),
              "verifiable_reward": "demo_reward", "eval_prompts": args.eval_prompts, "max_new_tokens": 20,
              "seed": 1, "threads": args.threads, "lr": 3e-3, "steps": args.steps, "eval_every": args.eval_every,
              "batch_size": 64}
    ppo = {**common, "num_mini_batches": 2, "ppo_epochs": 2}
    configs = {  # name: (subcommand, config)
        "ppo": ("ppo", ppo),
        "grpo": ("grpo", {**common, "num_generations": 4}),
        "rloo": ("rloo", {**common, "num_generations": 4}),
    }
    print(f"load average before: {os.getloadavg()}", flush=True)
    runs = {name: run_method(name, kind, cfg, work) for name, (kind, cfg) in configs.items()
            if name in args.only.split(",")}
    print(f"load average after: {os.getloadavg()}")

    grpo = runs.get("grpo")
    target = grpo["curve"][-1][3] if grpo else None
    print("| method | steps | answers / step | train s | samples/s | peak RSS MB | held-out sampled reward start → "
          "best → end | greedy start → end | s to reach GRPO's final sampled reward |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for kind, r in runs.items():
        c, res = r["curve"], r["result"]
        reach = time_to_reach(c, target) if target is not None else None
        best = max(p[3] for p in c)
        print(f"| {kind} | {res['steps']} | 64 | {res['train_seconds']:.0f} | {res['samples_per_second']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {c[0][3]:.3f} → {best:.3f} → {c[-1][3]:.3f} | {c[0][2]:.3f} → {c[-1][2]:.3f} | "
              f"{'never' if reach is None else f'{reach:.0f}'} |")
    if grpo and "ppo" in runs:
        ppo_reach, grpo_reach = time_to_reach(runs["ppo"]["curve"], target), time_to_reach(grpo["curve"], target)
        ratio = None if ppo_reach is None else ppo_reach / max(grpo_reach, 1e-9)
        mem_ratio = runs["ppo"]["peak_rss_mb"] / grpo["peak_rss_mb"]
        print(f"\nGRPO's final held-out sampled reward {target:.3f}: PPO/GRPO wall time to reach it "
              f"{'not reached' if ratio is None else f'{ratio:.2f}'}; peak memory PPO/GRPO: {mem_ratio:.2f}")

    out = Path(args.out)
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "policy.json").write_text(json.dumps(
        {k: {"curve": v["curve"], "peak_rss_mb": v["peak_rss_mb"], "result": v["result"]} for k, v in runs.items()},
        indent=1, default=str))
    plot(runs, out / "policy_benchmark.png")


def plot(runs: dict, path: Path) -> None:
    """Held-out reward (sampled: solid; greedy: dotted) against steps and against training wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, r) in enumerate(runs.items()):
        steps = [p[0] for p in r["curve"]]
        secs = [p[1] for p in r["curve"]]
        for col, style in ((3, "-o"), (2, ":")):
            ys = [p[col] for p in r["curve"]]
            label = f"{name} ({'greedy' if col == 2 else 'sampled'})"
            for ax, xs in ((axes[0], steps), (axes[1], secs)):
                ax.plot(xs, ys, style, color=f"C{i}", label=label, markersize=3, alpha=1.0 if col == 3 else 0.6)
    axes[0].set_xlabel("optimiser step (PPO: iteration)")
    axes[1].set_xlabel("training wall time, s (eval excluded)")
    for ax in axes:
        ax.set_ylabel("held-out demo_reward")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
