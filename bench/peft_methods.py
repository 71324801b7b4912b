"""PEFT methods side by side on the demo: for each `model.peft_method`, trainable parameters, peak memory, time per
step and held-out accuracy after the same SFT budget and the same reward-model budget.

    .venv/bin/python bench/peft_methods.py [--methods lora dora ...] [--seeds 0 1 2] [--sft-steps 120]
                                           [--rm-steps 120] [--json docs/benchmarks/peft_methods.json]

Each (method, stage, seed) runs in a fresh subprocess, so that its peak memory is its own: the peak resident set
size (ru_maxrss) of that process at the end of training — Python, torch, the model, the adapter, the optimizer and
activations — before anything is evaluated. torch has no counter of its CPU allocations, and tracemalloc does not
see them. Time per step is the engine's own train_seconds / steps (model loading not counted).

- SFT: `train_sft` on the references of the training prompts, then greedy captions of the held-out prompts scored
  against their references (word accuracy and exact match, evaluation.score_answers).
- Reward model: `train_reward_model` on the training pairs, held-out pair accuracy on the pairs of the held-out
  prompts (the engine's eval/accuracy).

Every method gets the same steps, batch and learning rates (the engine's defaults unless given) on the same data;
a method that would do better at its own learning rate is not tuned for here. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ["lora", "dora", "ia3", "loha", "lokr", "adalora", "bottleneck_adapter", "prompt_tuning"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def caption_figures(model, processor, held: list[dict], max_new_tokens: int) -> dict:
    """Held-out caption figures: greedy captions scored against the references (word accuracy, exact match:
    evaluation.score_answers), and, far more sensitive to a small budget, the reference's tokens under teacher
    forcing (next-token accuracy and mean negative log-likelihood per token)."""
    import torch

    from rlhf.engine.data import encode_completions, load_images
    from rlhf.engine.evaluation import evaluate_policy
    from rlhf.engine.losses import sft_loss
    from rlhf.engine.sft import completion_labels

    scores = evaluate_policy(model, processor, held, max_new_tokens=max_new_tokens)
    hits = tokens = 0
    nll = 0.0
    for i in range(0, len(held), 16):
        rows = held[i:i + 16]
        enc = encode_completions(processor, [load_images(r["images"]) for r in rows], [r["prompt"] for r in rows],
                                 [r["reference"][0] for r in rows])
        labels = completion_labels(enc.inputs["input_ids"], enc.completion_mask)
        with torch.no_grad():
            logits = model(**enc.inputs).logits
        target = labels[:, 1:]
        mask = target != -100
        hits += int((logits[:, :-1].argmax(-1)[mask] == target[mask]).sum())
        tokens += int(mask.sum())
        nll += float(sft_loss(logits, labels)) * int(mask.sum())
    return {"accuracy": scores["caption/word_accuracy"], "exact_match": scores["caption/exact_match"],
            "token_accuracy": hits / tokens, "nll": nll / tokens}


def run_stage(stage: str, method: str, seeds: list[int], data: Path, args) -> list[dict]:
    """One stage of one method for every seed, in this process; the figures of each run. The peak RSS is read
    at the end of the first seed's training (later seeds reuse the freed memory, so it hardly grows)."""
    import torch

    from rlhf.engine.config import ModelConfig, RewardConfig, SFTConfig
    from rlhf.engine.data import read_prompts
    from rlhf.engine.loading import load_model
    from rlhf.engine.sft import train_sft
    from rlhf.engine.train_reward import train_reward_model

    torch.set_num_threads(args.threads)
    model = ModelConfig(path=args.model, device="cpu", peft_method=method)
    held = [r for r in read_prompts(str(data / "prompts.jsonl")) if r.get("split") == "eval"][:args.heldout]
    runs, peak = [], 0.0
    for seed in seeds:
        with tempfile.TemporaryDirectory() as run_dir:
            if stage == "sft":
                cfg = SFTConfig(model=model, train_file=str(data / "prompts.jsonl"), steps=args.sft_steps,
                                batch_size=args.batch, seed=seed, log_every=args.sft_steps,
                                **({"lr": args.sft_lr} if args.sft_lr else {}))
                result = train_sft(cfg, run_dir)
                peak = peak or peak_rss_mb()
                policy, processor = load_model(ModelConfig(path=args.model, device="cpu",
                                                           adapter_path=result["checkpoint"]))
                figures = {**caption_figures(policy.eval(), processor, held, args.max_new_tokens),
                           "heldout": len(held), "trainable": result["trainable_parameters"]}
            else:
                cfg = RewardConfig(model=model, train_file=str(data / "preferences_train.jsonl"),
                                   eval_file=str(data / "preferences_heldout.jsonl"), max_steps=args.rm_steps,
                                   batch_size=args.batch, seed=seed, log_every=args.rm_steps,
                                   **({"lr": args.rm_lr} if args.rm_lr else {}))
                result = train_reward_model(cfg, run_dir)
                peak = peak or peak_rss_mb()
                figures = {"accuracy": result["eval/accuracy"], "heldout": result["eval_pairs"]}
        runs.append({"stage": stage, "method": method, "seed": seed, "lr": cfg.lr, "peak_rss_mb": round(peak, 1),
                     "s_per_step": result["train_seconds"] / result["steps"], "steps": result["steps"], **figures})
    return runs


def base_figures(data: Path, args) -> dict:
    """The held-out caption accuracy of the untrained base (what SFT starts from)."""
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.data import read_prompts
    from rlhf.engine.loading import count_parameters, load_model

    policy, processor = load_model(ModelConfig(path=args.model, device="cpu"))
    held = [r for r in read_prompts(str(data / "prompts.jsonl")) if r.get("split") == "eval"][:args.heldout]
    return {**caption_figures(policy, processor, held, args.max_new_tokens), "parameters": count_parameters(policy)[1]}


def mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(rows: list[dict], methods: list[str], base: dict) -> str:
    def pick(method, stage):
        return [r for r in rows if r["method"] == method and r["stage"] == stage]

    lines = ["| method | trainable parameters | SFT s/step | SFT peak RSS MB | held-out caption word acc. (greedy) "
             "| held-out token acc. (teacher-forced) | held-out NLL / token | RM s/step | RM peak RSS MB "
             "| held-out pair acc. |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| base, untrained | 0 of {base['parameters']:,} | | | {base['accuracy']:.3f} "
             f"| {base['token_accuracy']:.3f} | {base['nll']:.4f} | | | |"]
    for m in methods:
        sft, rm = pick(m, "sft"), pick(m, "rm")
        lines.append(
            f"| {m} | {sft[0]['trainable']:,} | {mean_sd([r['s_per_step'] for r in sft], '.3f')} "
            f"| {max(r['peak_rss_mb'] for r in sft):.0f} | {mean_sd([r['accuracy'] for r in sft], '.3f')} "
            f"| {mean_sd([r['token_accuracy'] for r in sft], '.3f')} | {mean_sd([r['nll'] for r in sft], '.4f')} "
            f"| {mean_sd([r['s_per_step'] for r in rm], '.3f')} | {max(r['peak_rss_mb'] for r in rm):.0f} "
            f"| {mean_sd([r['accuracy'] for r in rm], '.3f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", help="base model (default: the shipped demo base)")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--sft-steps", type=int, default=50)
    ap.add_argument("--rm-steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=1e-3, help="0 = the engine's default (2e-4)")
    ap.add_argument("--rm-lr", type=float, default=1e-3, help="0 = the engine's default (3e-4)")
    ap.add_argument("--prompts", type=int, default=300, help="demo prompts (20 %% held out by the world's split)")
    ap.add_argument("--heldout", type=int, default=48,
                    help="held-out prompts captioned after SFT, and the reward model's held-out pairs are theirs")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="longest held-out caption (a full one is ~15)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: the cores are shared)")
    ap.add_argument("--json", default="", help="also write every run's figures here")
    ap.add_argument("--one", nargs=3, metavar=("STAGE", "METHOD", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        stage, method, data = args.one
        print(json.dumps(run_stage(stage, method, args.seeds, Path(data), args)))
        return

    from rlhf.engine.data import read_prompts
    from rlhf.engine.demo.annotators import write_demo_preferences

    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {METHODS}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_demo_preferences(data, args.prompts, seed=11, k=4)
        held_ids = {r["prompt_id"] for r in read_prompts(str(data / "prompts.jsonl"))
                    if r.get("split") == "eval"}
        held_ids = set(sorted(held_ids)[:args.heldout])
        pairs = [line for line in (data / "preferences_eval.jsonl").read_text().splitlines()
                 if json.loads(line)["ranking_id"] in held_ids]
        (data / "preferences_heldout.jsonl").write_text("".join(p + "\n" for p in pairs))
        base = base_figures(data, args)
        rows = []
        for method in args.methods:
            for stage in ("sft", "rm"):
                out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", stage, method, str(data)],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{stage} {method} failed:\n{out.stderr[-3000:]}")
                for r in json.loads(out.stdout.strip().splitlines()[-1]):
                    rows.append(r)
                    print(f"{stage:3s} {method:18s} seed {r['seed']}: acc {r['accuracy']:.3f}, {r['s_per_step']:.3f} "
                          f"s/step, peak RSS {r['peak_rss_mb']:.0f} MB, held-out {r['heldout']}", flush=True)
    print(f"\nbase {args.model}; {args.prompts} demo prompts, {args.heldout} held out; SFT {args.sft_steps} steps, reward model {args.rm_steps} "
          f"steps, batch {args.batch}, seeds {args.seeds}, {args.threads} torch threads; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print(table(rows, args.methods, base))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "one"},
                                               "base": base, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
