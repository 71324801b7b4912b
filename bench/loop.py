"""Label efficiency of the closed loop on the demo world.

Per arm and seed, a fresh project on the demo base goes through real rounds: the starting policy's samples
become ranking tasks, simulated annotators (the demo world's ground truth, `--noise` chance of swapping each
neighbouring pair of ranks) rank `--rankings` of them, a round runs (export → reward model → policy →
evaluate → register → generate the next `--rankings` tasks from the new policy), and again, `--rounds` times.
After each round the active policy's held-out caption accuracy is measured on 200 scenes no project has seen.

    .venv/bin/python bench/loop.py [--rounds 3] [--rankings 500] [--noise 0.1] [--seeds 3]
        [--arms ppo,grpo,dpo,gt-grpo] [--parallel 2]
    .venv/bin/python bench/loop.py --plot-only     # redraw docs/loop_benchmark.png from the JSON

Arms: `ppo`, `grpo` (against the reward model trained on the rankings), `dpo` (on the ranking pairs), and
`gt-grpo`, GRPO trained on the ground-truth reward itself, the upper bound a perfect annotator would give
(its rounds still train a reward model, unused, so its round time is comparable). `grpo-banned` and `ppo-banned` compose
the policy's reward: the reward model + `banned_words` on `--banned` (docs/engine.md, "Composed rewards"); their
held-out figures add the share of answers that say the word. `--name` keeps their results apart from the loop's
(docs/benchmarks/<name>.json, docs/<name>_benchmark.png). The promotion gate is off:
every round's policy becomes active, so the figures are what each method learns, not what the gate lets
through (docs/loop.md, the promotion gate).

A seed changes the project's scenes and the annotators' choices; each arm of one seed starts from the same
scenes, tasks and rankings. The steps run through the loop's own code (`rlhf.jobs.run_step`, the job an rq
worker runs: the engine in a subprocess per step) on a SQLite database of each run's own; rq itself is left
out. Each (arm, seed) runs in a process of its own, so the peak memory reported is its own.

Caption accuracy = `demo_reward` on caption prompts: the mean of count, colour and shape correctness
(rlhf.engine.demo.rewards.caption_reward), in points (× 100). "sampled": 4 answers per scene at T = 1, how the
loop samples its candidates; "greedy": the most likely answer. Held-out: 200 scenes of another seed. The
reward model's accuracy is its own held-out figure in the round (`eval/accuracy`): the rankings of the
round's held-out prompts, the policy's own samples it never trained on. Every figure is a mean over seeds
with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {
    "ppo": {"algorithm": "ppo"},
    "grpo": {"algorithm": "grpo"},
    "dpo": {"algorithm": "dpo"},
    "gt-grpo": {"algorithm": "grpo", "use_reward_model": False, "verifiable_reward": "demo_reward"},
    # A composed reward (docs/engine.md): the reward model + banned_words on --banned (a word the starting
    # policy says in most captions), weighted --banned-weight; the held-out figures add the share of answers
    # that still say it.
    "grpo-banned": {"algorithm": "grpo"},
    "ppo-banned": {"algorithm": "ppo"},
}


def round_params(arm: str, args) -> dict:
    from rlhf.engine.demo import DEMO_POLICY_LORA

    # The reward model: a LoRA adapter (the engine's default; lr 1e-3 was the best of those tried), or with
    # --reward-full every weight of the demo base.
    reward = {"reward_lora": False, "reward_lr": 3e-4} if args.reward_full else {"reward_lora": True, "reward_lr": 1e-3}
    common = {"generate_prompts": args.rankings, "reward_epochs": args.reward_epochs, **reward,
              "temperature": args.temperature, "kl_coef": args.kl, **DEMO_POLICY_LORA}
    if ARMS[arm]["algorithm"] == "dpo":
        policy = {"policy_steps": args.dpo_steps, "policy_batch_size": 16, "lr": 1e-3}
    else:
        policy = {"policy_steps": args.policy_steps, "policy_batch_size": 64}
    if arm.endswith("-banned"):
        policy["reward"] = [{"reward": "reward_model"}, {"reward": "banned_words", "weight": args.banned_weight,
                                                         "params": {"words": args.banned.split(",")}}]
    return {**common, **policy, **ARMS[arm]}


def banned_word(arm: str, args) -> str:
    return args.banned if arm.endswith("-banned") else ""


def setup_django(work: Path) -> None:
    os.environ["LENSLOOP_VAR_DIR"] = str(work / "var")
    os.environ.pop("DATABASE_URL", None)  # the bench's own SQLite database under var/
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lensloop.settings")
    import django

    django.setup()


def evaluate(model_path: str, adapter: str, held: Path, banned: str = "") -> dict:
    """Held-out caption accuracy (points) of a policy: greedy and 4 samples per scene at T = 1; with `banned`,
    also the share of those answers (%) that say the banned word (any of them, for a comma-separated list)."""
    import re

    import torch

    from rlhf.engine.config import ModelConfig
    from rlhf.engine.data import read_prompts
    from rlhf.engine.loading import load_model
    from rlhf.engine.reward_terms import Term
    from rlhf.engine.rl_common import ComposedReward, evaluate_reward

    torch.set_num_threads(2)
    model, processor = load_model(ModelConfig(path=model_path, device="cpu", adapter_path=adapter or None))
    accuracy = ComposedReward([Term("demo_reward")])
    said: list[float] = []  # per evaluation pass (greedy, then sampled): share of answers with the banned word

    def reward(prompts, completions, **kwargs):
        if banned:
            words = "|".join(re.escape(word) for word in banned.split(","))
            pattern = re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)
            said.append(100 * sum(bool(pattern.search(c)) for c in completions) / len(completions))
        return accuracy(prompts, completions, **kwargs)

    out = evaluate_reward(model, processor, read_prompts(str(held)), reward, max_new_tokens=24)
    figures = {"greedy": round(100 * out["eval/reward_mean"], 1), "sampled": round(100 * out["eval/reward_sampled"], 1)}
    if banned:
        figures.update(banned_greedy=round(said[0], 1), banned_sampled=round(said[1], 1))
    return figures


def run_arm(arm: str, seed: int, args, work: Path) -> dict:
    """One arm and seed, in this process: project, starting tasks, then rounds of ranking + training. Each
    has a database of its own, so its runs get the same ids, hence the same engine seeds, as the other arms'
    of its seed: the same starting tasks and rankings in round 1, the same reward-model seed."""
    setup_django(work / f"{arm}-{seed}")
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from annotation.models import RankingTask
    from annotation.services.imports import import_bundle
    from annotation.services.projects import project_create
    from rlhf.jobs import run_step
    from rlhf.models import ModelVersion
    from rlhf.services import loop_settings_set, start_generate, start_round
    from rlhf.simulate import simulate

    project = project_create(name=f"bench {arm}", slug=f"bench-{arm}", task_type="caption", candidates_per_task=4)
    project.base_model = args.model
    project.save(update_fields=["base_model"])
    loop_settings_set(project=project, promotion_gate="off")
    import_bundle(project=project, path=work / f"scenes-{seed}", origin="bench")
    RankingTask.objects.filter(project=project).update(state="closed")  # the world's candidates: not the policy's

    def run(steps) -> None:
        for step in steps:
            if run_step(step.pk) != "succeeded":
                step.refresh_from_db()
                raise SystemExit(f"{arm}: step {step.kind} {step.state}: {step.error[-2000:]}")

    t = time.monotonic()
    gen = start_generate(project=project, prompts=args.rankings, enqueue=False)
    gen.config["temperature"] = args.temperature  # the first tasks' candidates, like every round's
    gen.save(update_fields=["config"])
    run([gen])
    print(f"{arm} seed {seed}: {RankingTask.objects.filter(project=project, state='open').count()} tasks from the starting "
          f"policy in {time.monotonic() - t:.0f} s", flush=True)
    points = []
    for r in range(1, args.rounds + 1):
        done = simulate(project, annotators=4, noise=args.noise, limit=args.rankings, seed=1000 * seed + r)
        t = time.monotonic()
        round_run = start_round(project=project, params=round_params(arm, args), enqueue=False)
        run(round_run.steps.order_by("position"))
        seconds = time.monotonic() - t
        round_run.refresh_from_db()
        steps = {s.kind: s for s in round_run.steps.all()}
        policy = ModelVersion.objects.get(project=project, kind="policy", active=True)
        acc = evaluate(args.model, policy.path, work / "held" / "prompts.jsonl", banned_word(arm, args))
        step_seconds = {s.kind: round((s.finished_at - s.started_at).total_seconds(), 1) for s in steps.values()}
        reward_result = steps["reward"].result or {}
        reward_acc = reward_result.get("eval/accuracy")
        point = {"round": r, "rankings": r * args.rankings, "ranked_this_round": done["rankings"],
                 "pairs": steps["export"].snapshot["pairs"], "round_seconds": round(seconds, 1),
                 "step_seconds": step_seconds, "reward_model_accuracy": reward_acc,
                 "reward_model_eval_pairs": reward_result.get("eval_pairs"), **acc,
                 "policy": policy.label, "state": round_run.state}
        points.append(point)
        print(f"{arm} seed {seed} round {r}: {acc} in {seconds:.0f} s {step_seconds} (RM accuracy {reward_acc} on "
              f"{reward_result.get('eval_pairs')} held-out pairs)", flush=True)
    return {"points": points, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "params": round_params(arm, args), "seed": seed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="base model folder (default: the shipped demo base)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rankings", type=int, default=500, help="rankings per round")
    ap.add_argument("--noise", type=float, default=0.1, help="chance that an annotator swaps a neighbouring pair")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm (scenes and annotators' choices)")
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed … first-seed + seeds − 1 "
                    "(to add seeds to an earlier run)")
    ap.add_argument("--parallel", type=int, default=1, help="(arm, seed) runs at a time; each gets cores / parallel "
                    "torch threads")
    ap.add_argument("--policy-steps", type=int, default=40, help="PPO iterations / GRPO steps per round (64 answers each)")
    ap.add_argument("--dpo-steps", type=int, default=200, help="DPO steps per round (16 pairs each)")
    ap.add_argument("--reward-epochs", type=float, default=2.0)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the candidates "
                    "annotators rank (the round's `temperature`)")
    ap.add_argument("--reward-full", action="store_true", help="train every weight of the reward model's backbone "
                    "(reward_lora: false) instead of a LoRA adapter (r 8 on q/v)")
    ap.add_argument("--scenes", type=int, default=1000, help="scenes in each project")
    ap.add_argument("--banned", default="small", help="the word (or comma-separated words) the *-banned arms penalise (the demo base says "
                    "'small' in about 70%% of its captions; size is not part of caption accuracy)")
    ap.add_argument("--banned-weight", type=float, default=1.0, help="weight of the banned_words term")
    ap.add_argument("--kl", type=float, default=0.05, help="the rounds' KL coefficient (PPO's kl_coef, GRPO's beta; "
                                                           "the round's default)")
    ap.add_argument("--name", default="loop", help="results go to <out>/benchmarks/<name>.json and <out>/<name>_benchmark.png")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm and seed in this process
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads((out / "benchmarks" / f"{args.name}.json").read_text()), out / f"{args.name}_benchmark.png")
        return
    if args.arm:
        result = run_arm(args.arm, args.seed, args, Path(args.work))
        (Path(args.work) / f"{args.arm}-{args.seed}.json").write_text(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    from rlhf.engine.demo import world
    from rlhf.engine.demo.annotators import write_demo_preferences
    from rlhf.engine.loading import resolve_model_path

    args.model = resolve_model_path(args.model)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        world.write_demo_manifest(work / f"scenes-{seed}", n=args.scenes, seed=5 + 100 * seed, k=4, eval_fraction=0.1)
    write_demo_preferences(work / "held", 200, seed=11, k=2)
    print(f"work folder {work}; model {args.model}; load average {os.getloadavg()}", flush=True)
    start = evaluate(args.model, "", work / "held" / "prompts.jsonl", args.banned)
    print(f"starting policy: {start}", flush=True)

    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def one(job: tuple[str, int]) -> None:
        arm, seed = job
        cmd = [sys.executable, __file__, "--arm", arm, "--seed", str(seed), "--work", str(work), "--model", args.model]
        for flag in ("rounds", "rankings", "noise", "policy_steps", "dpo_steps", "reward_epochs", "temperature"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += ["--reward-full"] if args.reward_full else []
        cmd += ["--banned", args.banned, "--banned-weight", str(args.banned_weight), "--kl", str(args.kl)]
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)

    jobs = [(arm, seed) for seed in seeds for arm in args.arms.split(",")]
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, jobs))
    arms = {arm: [json.loads((work / f"{arm}-{seed}.json").read_text()) for seed in seeds]
            for arm in args.arms.split(",")}
    results = {"start": start, "arms": arms, "rankings_per_round": args.rankings, "noise": args.noise,
               "seeds": args.seeds, "first_seed": args.first_seed, "parallel": args.parallel, "threads_per_run": threads,
               "model": args.model, "load_after": os.getloadavg(), "banned": args.banned,
               "banned_weight": args.banned_weight, "kl": args.kl}
    report(results)
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    plot(results, out / f"{args.name}_benchmark.png")


T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, df)


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / len(xs) ** 0.5


def fmt(xs: list[float], digits: int = 1, sign: bool = False) -> str:
    m, h = mean_ci(xs)
    return f"{m:+.{digits}f} ± {h:.{digits}f}" if sign else f"{m:.{digits}f} ± {h:.{digits}f}"


def report(results: dict) -> None:
    start, arms = results["start"], results["arms"]
    print(f"\nstarting policy: sampled {start['sampled']}, greedy {start['greedy']}; "
          f"{results['seeds']} seeds per arm, mean ± 95% interval")
    print("| arm | sampled after each round | gain over start | share of the bound's gain | greedy after each round "
          "| RM held-out accuracy after each round | round time s (max) | peak RSS MB |")
    print("|---|---|---:|---:|---|---|---:|---:|")
    bound_gain = statistics.mean(r["points"][-1]["sampled"] - start["sampled"] for r in arms["gt-grpo"]) \
        if "gt-grpo" in arms else None

    def per_round(runs: list[dict], key: str, i: int) -> list[float]:
        return [r["points"][i][key] for r in runs if r["points"][i].get(key) is not None]

    for arm, runs in arms.items():
        rounds = len(runs[0]["points"])
        sampled = " → ".join(fmt(per_round(runs, "sampled", i)) for i in range(rounds))
        greedy = " → ".join(fmt(per_round(runs, "greedy", i)) for i in range(rounds))
        gains = [r["points"][-1]["sampled"] - start["sampled"] for r in runs]
        share = "" if not bound_gain or arm == "gt-grpo" else f"{statistics.mean(gains) / bound_gain:.0%}"
        rm = " → ".join(fmt([100 * x for x in per_round(runs, "reward_model_accuracy", i)])
                        if per_round(runs, "reward_model_accuracy", i) else "–" for i in range(rounds))
        slowest = max(p["round_seconds"] for r in runs for p in r["points"])
        rss = max(r["peak_rss_mb"] for r in runs)
        print(f"| {arm} | {sampled} | {fmt(gains, sign=True)} | {share} | {greedy} | {rm} | {slowest:.0f} | {rss:.0f} |")
    banned = [(arm, runs) for arm, runs in arms.items() if arm.endswith("-banned")]
    if banned:
        word = results.get("banned", "")
        print(f"\nanswers that say {word!r}, % (starting policy: sampled {start.get('banned_sampled')}, greedy "
              f"{start.get('banned_greedy')})")
        print("| arm | sampled after each round | greedy after each round | caption accuracy change (sampled) |")
        print("|---|---|---|---:|")
        for arm, runs in banned:
            rounds = len(runs[0]["points"])
            said = " → ".join(fmt(per_round(runs, "banned_sampled", i)) for i in range(rounds))
            said_greedy = " → ".join(fmt(per_round(runs, "banned_greedy", i)) for i in range(rounds))
            gains = [r["points"][-1]["sampled"] - start["sampled"] for r in runs]
            print(f"| {arm} | {said} | {said_greedy} | {fmt(gains, sign=True)} |")


def plot(results: dict, path: Path) -> None:
    """Held-out caption accuracy (sampled) against rankings used, per arm: the mean over seeds, the 95%
    interval shaded; the greedy means dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    start = results["start"]
    for i, (arm, runs) in enumerate(results["arms"].items()):
        xs = [0] + [p["rankings"] for p in runs[0]["points"]]
        stats = [mean_ci([start["sampled"]])] + [mean_ci([r["points"][j]["sampled"] for r in runs])
                                                 for j in range(len(runs[0]["points"]))]
        means = [m for m, _ in stats]
        ax.plot(xs, means, "-o", color=f"C{i}", label=f"{arm} (sampled)", markersize=4)
        ax.fill_between(xs, [m - h for m, h in stats], [m + h for m, h in stats], color=f"C{i}", alpha=0.18, lw=0)
        greedy = [start["greedy"]] + [statistics.mean(r["points"][j]["greedy"] for r in runs)
                                      for j in range(len(runs[0]["points"]))]
        ax.plot(xs, greedy, ":", color=f"C{i}", alpha=0.6, label=f"{arm} (greedy)")
    ax.axhline(start["sampled"], color="grey", lw=0.8, ls="--", label="starting policy (sampled)")
    ax.set_xlabel(f"rankings used (simulated annotators, {results['noise']:.0%} noise)")
    ax.set_ylabel("held-out caption accuracy, points")
    ax.set_title(f"mean of {results.get('seeds', 1)} seeds, 95% interval shaded", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
