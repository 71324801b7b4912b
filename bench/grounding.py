"""Does a grounding round raise held-out mean IoU? The demo world's grounding prompts ("Where is the red
circle?", ground truth: the object's box), the policy step of a round with the IoU reward (GRPO, `iou_reward`,
the demo model's RL configuration), held-out mean IoU of the greedy answers and of sampled ones before and
after, over several seeds. Prints one row per seed and the mean ± sd.

    .venv/bin/python bench/grounding.py [--seeds 3] [--sft-steps 600] [--steps 60] [--threads 1]

The start. The demo base was never taught boxes: it answers "blue" or "" to a grounding prompt, IoU 0 on every
answer, and a group-relative method has nothing to learn from when every answer of a group scores the same. So
each seed first warm-starts the base by supervised fine-tuning on the references of other scenes (a short run,
`--sft-steps`, that leaves the boxes rough), and the round starts from that policy: "start" below is the warm
start's held-out IoU, "after" the round's. The references are spelled the way the demo tokenizer can write them:
its vocabulary has the digits 0–9 but no number of two digits, so `[12, 40, 50, 80]` is written
`[1 2, 4 0, 5 0, 8 0]`, the same box in the box format (spaces inside a number are ignored, rewards.parse_boxes).

Every figure is on held-out scenes (a separate set, other seeds of the world) that neither step trains on.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spelled(box_text: str) -> str:
    """A box answer with each number's digits apart, as the demo tokenizer writes numbers."""
    return re.sub(r"\d+", lambda m: " ".join(m.group(0)), box_text)


def prompt_set(folder: Path, n: int, seed: int) -> Path:
    """`n` grounding prompts of the demo world as a prompt-set JSONL (references spelled for the tokenizer)."""
    from rlhf.engine.demo import world

    manifest = world.write_demo_manifest(folder, n, seed=seed, task_type="grounding", k=0, eval_fraction=0.0)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    out = folder / "prompts.jsonl"
    out.write_text("".join(json.dumps({"prompt_id": i, "images": [r["image"]], "prompt": r["prompt"],
                                       "reference": [spelled(x) for x in r["reference"]],
                                       "ground_truth": r["ground_truth"]}) + "\n" for i, r in enumerate(rows)))
    return out


def one_seed(seed: int, args, work: Path) -> dict:
    import torch

    from rlhf.engine.config import load_config
    from rlhf.engine.demo import DEMO_POLICY_LORA
    from rlhf.engine.sft import train_sft
    from rlhf.engine.trl_policy import train_grpo

    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    train = prompt_set(work / f"train-{seed}", args.train, seed=1000 + seed)
    held = prompt_set(work / f"heldout-{seed}", args.heldout, seed=2000 + seed)
    sft = train_sft(load_config("sft", {"model": {"path": args.model, "device": "cpu", "lora": False},
                                        "train_file": str(train), "steps": args.sft_steps, "batch_size": 16,
                                        "lr": args.sft_lr, "seed": seed}), str(work / f"sft-{seed}"))
    cfg = load_config("grpo", {"model": {"path": sft["checkpoint"], "device": "cpu", **DEMO_POLICY_LORA},
                               "prompts_file": str(train), "eval_file": str(held), "verifiable_reward": "iou_reward",
                               "steps": args.steps, "batch_size": 64, "num_generations": 4,
                               "eval_prompts": args.heldout, "max_new_tokens": 24, "lr": args.lr, "seed": seed,
                               "threads": args.threads})
    result = train_grpo(cfg, str(work / f"grpo-{seed}"))
    return {"seed": seed, "greedy_before": result["eval_before/reward_mean"], "greedy_after": result["eval/reward_mean"],
            "sampled_before": result["eval_before/reward_sampled"], "sampled_after": result["eval/reward_sampled"],
            "sft_seconds": sft["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--model", default="demo", help="base policy (default: the shipped demo base)")
    ap.add_argument("--train", type=int, default=400, help="training scenes")
    ap.add_argument("--heldout", type=int, default=100, help="held-out scenes")
    ap.add_argument("--sft-steps", type=int, default=600, help="warm-start steps (batch 16)")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=60, help="GRPO steps of the round (64 answers each)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="", help="JSON file for the rows")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lensloop-grounding-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = one_seed(seed, args, Path(tmp))
            rows.append(row)
            print(f"seed {seed}: held-out mean IoU, greedy {row['greedy_before']:.3f} → {row['greedy_after']:.3f}; "
                  f"sampled (T = 1) {row['sampled_before']:.3f} → {row['sampled_after']:.3f}", flush=True)
    print(f"\n{'figure (held-out mean IoU)':32s} {'start':>15s} {'after the round':>17s} {'change':>15s}")
    for kind in ("greedy", "sampled"):
        before = [r[f"{kind}_before"] for r in rows]
        after = [r[f"{kind}_after"] for r in rows]
        change = [a - b for a, b in zip(after, before, strict=True)]

        def ms(xs):
            return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"

        print(f"{kind:32s} {ms(before):>15s} {ms(after):>17s} {ms(change):>15s}  (min change {min(change):+.3f})")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
