"""Training-engine benchmark: generation samples/s and reward-model training pairs/s with peak memory for
the demo model on this machine, and the memory plan on paper for a real 2B VLM.

    .venv/bin/python bench/engine.py [--model PATH] [--prompts 32] [--k 4] [--pairs 512]

Prints figures; asserts nothing (tests never time anything).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_generation(model_path: str, n_prompts: int, k: int) -> None:
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.demo import world
    from rlhf.engine.generation import generate_candidates
    from rlhf.engine.loading import load_model

    model, processor = load_model(ModelConfig(path=model_path, device="cpu"))
    rng = random.Random(0)
    records = [{"images": [world.make_scene(rng)[0]], "prompt": world.CAPTION_PROMPT} for _ in range(n_prompts)]
    generate_candidates(model, processor, records[:2], k=k)  # warm-up
    t0 = time.perf_counter()
    cands = generate_candidates(model, processor, records, k=k, batch_size=8, max_new_tokens=32)
    dt = time.perf_counter() - t0
    n = sum(len(c) for c in cands)
    print(f"generation: {n_prompts} prompts x K={k} (batch 8 prompts, 32 new tokens max, distinct): "
          f"{n / dt:.1f} samples/s ({dt:.2f} s); peak RSS {peak_rss_mb():.0f} MB")


def bench_reward(model_path: str, n_pairs: int, lora: bool) -> None:
    from rlhf.engine.config import ModelConfig, RewardConfig
    from rlhf.engine.demo.annotators import write_demo_preferences
    from rlhf.engine.train_reward import train_reward_model

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_demo_preferences(Path(tmp) / "data", max(20, n_pairs // 4), seed=0, k=4)
        steps = max(1, n_pairs // 16)
        cfg = RewardConfig(model=ModelConfig(path=model_path, device="cpu", lora=lora),
                           train_file=str(paths["preferences_train"]), eval_file=str(paths["preferences_eval"]),
                           max_steps=steps, batch_size=16, log_every=max(1, steps))
        r = train_reward_model(cfg, str(Path(tmp) / "run"))
    print(f"reward model ({'LoRA r=8 q/v' if lora else 'full'}, likelihood term {cfg.likelihood_term}), batch 16, "
          f"{r['steps']} steps: "
          f"{r['pairs_per_second']:.1f} pairs/s; held-out acc {r['eval/accuracy']:.3f}; peak RSS {peak_rss_mb():.0f} MB")


def memory_plan() -> None:
    """Paper plan for a ~2.2B VLM (e.g. a 1.7B LM + 0.4B vision tower), LoRA r=16 on all LM attention."""
    params = 2.2e9
    lora = 20e6  # ~1% trainable
    act_gb = {"bf16 LoRA": 6.0, "QLoRA 4-bit": 6.0}  # batch 8 x 1k tokens incl. ~600 image tokens, with GC
    rows = {
        "bf16 LoRA": params * 2 / 1e9,
        "QLoRA 4-bit": params * 0.55 / 1e9 + 0.6,  # NF4 + double-quant constants; vision/proj kept in bf16
    }
    print("\nmemory plan, 2.2B VLM, LoRA 20M trainable (fp32 master + Adam: 16 B/param), gradient checkpointing:")
    for name, w in rows.items():
        opt = lora * 16 / 1e9
        total = w + opt + act_gb[name]
        fits = [f"{gpu} GB: {'fits' if total < gpu * 0.9 else 'no'}" for gpu in (24, 80)]
        print(f"  {name:12s} weights {w:5.1f} GB + adapter/optimizer {opt:4.2f} GB + activations ~{act_gb[name]:.0f} GB"
              f" = {total:5.1f} GB  ({', '.join(fits)})")
    print("  PPO adds a reference (adapter disabled: free) and a reward model (+weights once more, no optimizer).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="model folder (default: the cached default demo build)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=512)
    args = ap.parse_args()
    import torch

    from rlhf.engine.loading import resolve_model_path

    path = resolve_model_path(args.model)
    print(f"model {path}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_generation(path, args.prompts, args.k)
    bench_reward(path, args.pairs, lora=True)
    bench_reward(path, args.pairs, lora=False)
    memory_plan()


if __name__ == "__main__":
    main()
