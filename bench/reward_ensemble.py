"""Would an ensemble of reward models be right more often on a round's held-out pairs than one?

Takes the run folder of a round's reward step (its `config.json`: the round's training and held-out
preference files and settings), trains the same reward model with other seeds (`train-reward`, one process
each; a seed whose folder under --out already holds a checkpoint is reused: copy the round's own checkpoint
there to count it without retraining), and prints each model's held-out pair accuracy and that of the
ensemble of the first 1, 2, … models: the mean of their rewards, each model's divided by its standard
deviation over the held-out answers first (their scales differ), with a Wilson 95 % interval.

    .venv/bin/python bench/reward_ensemble.py RUNS/round-16/2-reward --out /tmp/ensemble --seeds 16 17 18 19 20

With `--fraction F` the models train on a share F of the round's rankings (all pairs of a ranking or none,
chosen by a hash of its id), evaluated on the same held-out pairs: how the accuracy grows with rankings.

    .venv/bin/python bench/reward_ensemble.py RUNS/round-16/2-reward --out /tmp/data --seeds 16 17 --fraction 0.5

bench/loop.py keeps its work folder (printed at its start); a project's rounds keep theirs under
`var/data/runs/round-<id>/2-reward`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reward_run", help="the run folder of a round's reward step (holds config.json)")
    ap.add_argument("--out", required=True, help="where the seeds' runs go")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--fraction", type=float, default=1.0, help="train on this share of the round's rankings")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                    help="change the round's reward settings, e.g. margin_weight=0.5 or model.lora=false (the seeds' "
                         "folders are named by it)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"--fraction must lie in (0, 1], not {args.fraction}")

    import torch

    from lensloop.stats import wilson
    from rlhf.engine.data import read_preferences
    from rlhf.engine.reward_model import load_reward_model, score

    config = json.loads((Path(args.reward_run) / "config.json").read_text())
    pairs = read_preferences(config["eval_file"])
    images, prompts = [p["images"] for p in pairs], [p["prompt"] for p in pairs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = read_preferences(config["train_file"])
    tag = ""
    for setting in args.set:  # KEY=JSON; a dotted KEY reaches into a section (model.lora=false)
        key, _, value = setting.partition("=")
        *sections, name = key.split(".")
        target = config
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None
        if not isinstance(target, dict):  # a new key is checked by the engine, which names what it does not know
            raise SystemExit(f"--set {setting}: the reward settings have no section {'.'.join(sections)!r}")
        target[name] = json.loads(value)
        tag += f"-{key}{_folder_safe(value)}"
    if args.fraction < 1:  # absolute image paths: the subset lives in --out, the images stay where they are
        tag += f"-f{args.fraction:g}"
        train = [r for r in train if _share(r.get("ranking_id") or r["id"]) < args.fraction]
        config["train_file"] = str(out / f"train{tag}.jsonl")
        Path(config["train_file"]).write_text("".join(json.dumps(r) + "\n" for r in train))
    print(f"{len(train)} training pairs, {len(pairs)} held-out pairs", flush=True)
    chosen, rejected, rows, cache = [], [], [], {}
    for seed in args.seeds:
        run = out / f"seed{seed}{tag}"
        if not (run / "checkpoint").is_dir():
            path = out / f"config-{seed}{tag}.json"
            path.write_text(json.dumps({**config, "seed": seed}))
            done = subprocess.run([sys.executable, "-m", "rlhf.engine", "train-reward", "--config", str(path),
                                   "--run-dir", str(run)], cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"train-reward failed for seed {seed}:\n{done.stderr[-3000:]}")
        rm, processor = load_reward_model(run / "checkpoint", device="cpu")
        rm.eval()
        c = score(rm, processor, images, prompts, [p["chosen"] for p in pairs], image_cache=cache)
        r = score(rm, processor, images, prompts, [p["rejected"] for p in pairs], image_cache=cache)
        scale = torch.cat([c, r]).std()
        chosen.append(c / scale)
        rejected.append(r / scale)
        single = (c > r).float().mean().item()
        right = int((torch.stack(chosen).mean(0) > torch.stack(rejected).mean(0)).sum())
        low, high = wilson(right, len(pairs))
        rows.append({"seed": seed, "single": round(single, 4), "ensemble_of": len(chosen),
                     "ensemble": round(right / len(pairs), 4), "interval": [round(low, 4), round(high, 4)]})
        print(f"seed {seed}: alone {single:.3f}; the ensemble of {len(chosen)}: {right / len(pairs):.3f} "
              f"[{low:.3f}, {high:.3f}] on {len(pairs)} held-out pairs", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"reward_run": str(args.reward_run), "pairs": len(pairs),
                                               "fraction": args.fraction, "set": args.set, "train_pairs": len(train),
                                               "rows": rows}, indent=1) + "\n")


def _folder_safe(value: str) -> str:
    """The value as part of a folder name: as it is when it can be, else what can be kept of it and a hash of the
    whole, so that two values never share a folder (a seed's folder with a checkpoint is reused)."""
    kept = re.sub(r"[^\w.=-]", "", value)[:40]
    return kept if kept == value else f"{kept}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def _share(ranking_id: str) -> float:
    """Where a ranking falls in [0, 1), the same on every run."""
    return int.from_bytes(hashlib.sha256(str(ranking_id).encode()).digest()[:8], "big") / 2**64


if __name__ == "__main__":
    main()
