"""The reward model on the policy's own samples: held-out pair accuracy of reward-model variants.

What a round's reward model must do is rank the candidates the policy itself samples, which differ by a
word or an object, not the demo world's hand-made candidates. This bench samples K captions per scene from a
policy (the demo base by default), ranks them as the loop's simulated annotators do (the world's
ground truth, ties kept, each neighbouring pair of ranks swapped with probability `--noise`), writes preference records for the training scenes and for
held-out scenes of another seed, and trains each reward-model variant on the same pairs
(`python -m rlhf.engine train-reward`, one process per variant), printing the held-out pair accuracy,
calibration and training time.

    .venv/bin/python bench/reward_model.py [--model PATH] [--adapter DIR] [--scenes 1500] [--held 300]
        [--variants lora,lora-token,full,full-token] [--epochs 2] [--seeds 0]

Variants: `lora` (the loop's default: LoRA q/v + the likelihood term), `full` (all weights), `-token` adds
the per-token head summed over the answer (`token_head: sum`), `-tokenmean` averaged (`mean`), `-nolik`
drops the likelihood term.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "lora": {},
    "lora-token": {"token_head": "sum"},
    "lora-tokenmean": {"token_head": "mean"},
    "lora-nolik": {"likelihood_term": False},
    "full": {"model": {"lora": False}, "lr": 1e-4},
    "full-token": {"model": {"lora": False}, "lr": 1e-4, "token_head": "sum"},
    "full-tokenmean": {"model": {"lora": False}, "lr": 1e-4, "token_head": "mean"},
}


def sample(model: str, adapter: str, scenes: int, seed: int, k: int, out: Path, split: str) -> Path:
    """Sample K captions per scene from the policy; keep them with the scenes' ground truth."""
    import torch

    from rlhf.engine.config import ModelConfig
    from rlhf.engine.demo import world
    from rlhf.engine.generation import generate_candidates
    from rlhf.engine.loading import load_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    policy, processor = load_model(ModelConfig(path=model, adapter_path=adapter or None, device="cpu"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for i in range(scenes):
        image, gt = world.make_scene(rng)
        name = f"images/{split}-{seed}-{i}.png"
        image.save(out / name)
        records.append({"prompt_id": f"{split}-{i}", "images": [image], "prompt": world.CAPTION_PROMPT})
        rows.append({"prompt_id": f"{split}-{i}", "image": name, "ground_truth": gt})
    cands = generate_candidates(policy, processor, records, k=k, temperature=1.0, max_new_tokens=32, batch_size=16)
    for row, cs in zip(rows, cands, strict=True):
        row["texts"] = [c["text"] for c in cs]
    path = out / f"samples-{split}.json"
    path.write_text(json.dumps(rows))
    return path


def write_pairs(samples: Path, noise: float, seed: int, split: str) -> dict:
    """Rank each scene's samples as the loop's simulated annotators do (the world's ground truth, each
    neighbouring pair of ranks swapped with probability `noise`) and write the pairs as preference records."""
    from rlhf.engine.demo import world
    from rlhf.engine.demo.annotators import noisy_ordering
    from rlhf.engine.demo.rewards import demo_reward

    rng = random.Random(seed)
    lines, distinct = [], []
    for row in json.loads(samples.read_text()):
        texts = row["texts"]
        distinct.append(len(set(texts)))
        rewards = demo_reward([world.CAPTION_PROMPT] * len(texts), texts, ground_truth=[row["ground_truth"]] * len(texts))
        groups = noisy_ordering(dict(enumerate(rewards)), rng, noise)
        rank = {i: g for g, group in enumerate(groups) for i in group}
        n = 0
        for a in range(len(texts)):
            for b in range(len(texts)):
                if rank[a] < rank[b]:
                    lines.append(json.dumps({"id": f"{row['prompt_id']}-{n}", "project": "bench", "images": [row["image"]],
                                             "prompt": world.CAPTION_PROMPT, "chosen": texts[a], "rejected": texts[b],
                                             "margin": rank[b] - rank[a], "annotator": "sim",
                                             "ranking_id": row["prompt_id"], "created": "", "split": split}))
                    n += 1
    path = samples.parent / f"{split}-noise{noise}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return {"file": str(path), "pairs": len(lines), "distinct_per_prompt": round(statistics.mean(distinct), 2)}


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def train(variant: str, model: str, data: dict, epochs: float, seed: int, work: Path, threads: int) -> dict:
    cfg = deep_merge({"model": {"path": model, "device": "cpu"}, "train_file": data["train"]["file"],
                      "eval_file": data["eval"]["file"], "epochs": epochs, "batch_size": 16, "lr": 1e-3,
                      "seed": seed, "log_every": 50}, VARIANTS[variant])
    run = work / f"{variant}-{seed}"
    (work / f"{variant}-{seed}.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "rlhf.engine", "train-reward", "--config",
                           str(work / f"{variant}-{seed}.json"), "--run-dir", str(run)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{variant}: {proc.stderr[-3000:]}")
    return json.loads((run / "result.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--adapter", default="", help="a policy adapter on top of --model (e.g. a round's policy)")
    ap.add_argument("--scenes", type=int, default=1500)
    ap.add_argument("--held", type=int, default=300)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--variants", default="lora,lora-token,full,full-token")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="", help="folder to keep samples in (reused when it holds them)")
    args = ap.parse_args()
    from rlhf.engine.loading import resolve_model_path

    model = resolve_model_path(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-rm-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {split: work / f"samples-{split}.json" for split in ("train", "eval")}
    if not all(f.is_file() for f in files.values()):
        import torch

        torch.set_num_threads(args.threads)
        sample(model, args.adapter, args.scenes, 1, args.k, work, "train")
        sample(model, args.adapter, args.held, 2, args.k, work, "eval")
    data = {split: write_pairs(files[split], args.noise, 3 if split == "train" else 4, split) for split in files}
    print(f"model {model} adapter {args.adapter or '-'}; work {work}; {data['train']['pairs']} train pairs, "
          f"{data['eval']['pairs']} held-out pairs; distinct candidates per prompt "
          f"{data['train']['distinct_per_prompt']}", flush=True)
    print("| variant | seed | held-out accuracy | ECE | train s |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for variant in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            r = train(variant, model, data, args.epochs, seed, work, args.threads)
            results[f"{variant}-{seed}"] = r
            print(f"| {variant} | {seed} | {r['eval/accuracy']:.3f} | {r.get('eval/ece', float('nan')):.3f} | "
                  f"{r['train_seconds']:.0f} |", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
