"""`python -m rlhf.engine <subcommand> --config CONFIG.json --run-dir DIR` (also under `accelerate launch`).

Subcommands: build-demo, demo-data, sft, generate, train-reward, evaluate, ppo, grpo, rloo, dpo, config,
check-reward. The config is
validated before any model loads; exit code 2 means a bad config (message on stderr), 1 a failed run
(result.json says "failed").
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from .config import ConfigError, describe, load_config, to_dict

log = logging.getLogger("rlhf.engine")

# Policy optimisation (part 2): subcommand → (module, function); imported only when run.
POLICY_RUNNERS = {"ppo": (".ppo", "train_ppo"), "grpo": (".trl_policy", "train_grpo"),
                  "rloo": (".trl_policy", "train_rloo"), "dpo": (".trl_policy", "train_dpo")}


def run_build_demo(cfg, run_dir: str | None, data_dir: str | None = None, ship_to: str | None = None) -> dict:
    """Find the shipped or cached demo model, or build it; with a run dir, follow the run-directory contract
    (the model itself lives in the cache, written under a temporary name and renamed when complete). With
    `ship_to`, build it afresh (never the shipped copy) and copy it there with its checksums: how the demo
    base in rlhf/engine/demo/base is made."""
    from .demo.build import SHIPPED_DIR, demo_model_dir, ensure_demo_model, ship, shipped_build
    from .rundir import RunDir

    root = Path(data_dir) if data_dir else None
    run = RunDir(run_dir, to_dict(cfg)) if run_dir else None
    try:
        shipped = None if ship_to else shipped_build(cfg)
        cached = shipped is not None or (demo_model_dir(cfg, root) / "build.json").is_file()
        log.info("demo model %s (%s)", shipped or demo_model_dir(cfg, root),
                 "shipped" if shipped else "cached" if cached else "building")

        def on_step(step: int, metrics: dict) -> None:
            if run and (step % 20 == 0 or step == cfg.steps):
                run.log_metrics(step, cfg.steps, **metrics)

        def on_wait(step: int, steps: int) -> None:
            log.info("waiting for the demo model: step %d of %d (another process is building it)", step, steps)
            if run:
                run.log_metrics(step, steps, waiting_for_build=1)

        path = ensure_demo_model(cfg, root, on_step, shipped=None if ship_to else SHIPPED_DIR,
                                 on_wait=on_wait)
        if ship_to:
            path = ship(path, Path(ship_to))
            log.info("shipped the demo model to %s", path)
        info = json.loads((path / "build.json").read_text())
        if info["steps"] < cfg.steps:
            log.warning("the build stopped at step %d of %d: budget_seconds=%s bit, so this model is weaker than "
                        "the full build and depends on this machine's speed", info["steps"], cfg.steps,
                        cfg.budget_seconds)
        result = {"model_path": str(path.resolve()), "cached": cached, "shipped": shipped is not None,
                  "steps": info["steps"], "steps_planned": cfg.steps, "budget_reached": info["steps"] < cfg.steps,
                  "build_seconds": info["build_seconds"], "parameters": info["parameters"],
                  **{f"eval/{k}": v for k, v in info["eval_caption"].items() if k != "examples"},
                  "eval/vqa/exact_match": info["eval_vqa"].get("vqa/exact_match")}
        if run:
            run.write_result(result)
        return result
    except BaseException as e:
        if run:
            run.fail(e)
        raise
    finally:
        if run:
            run.close()


def run_generate(cfg, run_dir: str) -> dict:
    """Sample K distinct candidates per prompt and write the Samples JSONL."""
    from .data import read_prompts
    from .generation import generate_candidates, write_samples
    from .loading import load_model
    from .rundir import RunDir

    run = RunDir(run_dir, to_dict(cfg))
    with run:
        records = read_prompts(cfg.prompts_file)
        model, processor = load_model(cfg.model, trainable=False)
        t0 = time.monotonic()
        n_batches = -(-len(records) // cfg.batch_size)

        def on_batch(done: int, total: int) -> None:
            run.log_metrics(-(-done // cfg.batch_size), n_batches, prompts_done=done)

        cands = generate_candidates(model, processor, records, k=cfg.k, temperature=cfg.temperature,
                                    top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                    max_resample_rounds=cfg.max_resample_rounds,
                                    resample_temperature_step=cfg.resample_temperature_step, seed=cfg.seed,
                                    on_batch=on_batch)
        seconds = time.monotonic() - t0
        if cfg.reward_model_path:  # each sample carries its reward-model score (uncertainty priorities)
            from .reward_model import load_reward_model, score

            rm, rm_processor = load_reward_model(cfg.reward_model_path, device=cfg.model.device)
            flat = [(r, c) for r, cs in zip(records, cands, strict=True) for c in cs]
            rewards = score(rm, rm_processor, [r["images"] for r, _ in flat], [r["prompt"] for r, _ in flat],
                            [c["text"] for _, c in flat])
            for (_, c), value in zip(flat, rewards.tolist(), strict=True):
                c["reward"] = value
        out = Path(cfg.output_file) if cfg.output_file else Path(run_dir) / "samples.jsonl"
        n = write_samples(out, records, cands, cfg.model_version or cfg.model.path)
        result = {"samples_file": str(out), "prompts": len(records), "samples": n,
                  "prompts_short_of_k": sum(len(c) < cfg.k for c in cands), "generate_seconds": round(seconds, 2),
                  "samples_per_second": round(n / max(seconds, 1e-9), 2)}
        run.write_result(result)
        return result


def run_evaluate(cfg, run_dir: str) -> dict:
    """A policy (and the baseline it would replace) on held-out prompts: text scores, the verifiable reward,
    the reward model's scores, paired differences with intervals; optional reward-model pair accuracy."""
    from .evaluation import evaluate_run

    if cfg.prompts_file:
        return evaluate_run(cfg, run_dir)
    from .demo.build import eval_records  # no prompt set: fresh scenes of the demo world

    return evaluate_run(cfg, run_dir, eval_records(cfg.demo_images, cfg.seed, cfg.demo_task), "fresh demo-world scenes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in [("build-demo", "build (or find cached) the tiny demo VLM"),
                           ("sft", "supervised fine-tuning on a prompt set with references"),
                           ("generate", "sample K distinct candidates per prompt → samples JSONL"),
                           ("train-reward", "train the reward model on preference records"),
                           ("evaluate", "evaluate a policy (and optionally a reward model)"),
                           ("ppo", "PPO on the policy (LoRA/QLoRA) with a reward model and/or verifiable reward"),
                           ("grpo", "GRPO through TRL (K answers per prompt, group-relative advantages)"),
                           ("rloo", "RLOO through TRL (K answers per prompt, leave-one-out baseline)"),
                           ("dpo", "DPO through TRL on exported preference records")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="JSON config file (fields: `python -m rlhf.engine config " + name + "`)")
        p.add_argument("--run-dir", required=name != "build-demo", help="run directory to write")
        if name == "build-demo":
            p.add_argument("--data-dir", help="cache root (default $LENSLOOP_DATA_DIR or var/data)")
            p.add_argument("--ship-to", help="build afresh and copy the model with its SHA256SUMS into this folder "
                           "(rlhf/engine/demo/base for the shipped demo base)")
    p = sub.add_parser("demo-data", help="write a demo dataset: images, manifest, prompt set, preference records")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="caption", choices=["caption", "vqa", "grounding", "detection"])
    sub.add_parser("check-reward", help="check a composed reward before a run: every term but the reward model "
                   "imports and returns one finite number on a sample (stdin: JSON {\"reward\": [...], \"sample\": "
                   "{prompt, completion, images, ground_truth, reference}}; stdout: each term's value)")
    p = sub.add_parser("config", help="list the fields of a subcommand's config with defaults and help")
    p.add_argument("kind")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    if args.command == "config":
        print(describe(args.kind))
        return 0
    if args.command == "check-reward":
        from .reward_terms import dry_run, parse_terms

        try:
            request = json.loads(sys.stdin.read() or "{}")
            print(json.dumps(dry_run(parse_terms(request.get("reward") or []), request.get("sample") or {})))
        except (ConfigError, ValueError) as e:
            print(f"config error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "demo-data":
        from .demo.annotators import write_demo_preferences

        paths = write_demo_preferences(args.out, args.n, args.seed, k=args.k, task_type=args.task)
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
        return 0
    try:
        cfg = load_config(args.command, args.config)
        if args.command in POLICY_RUNNERS:
            from .rl_config import preflight

            preflight(cfg)  # files and process count, before any model loads
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "build-demo":
            result = run_build_demo(cfg, args.run_dir, args.data_dir, args.ship_to)
        elif args.command == "sft":
            from .sft import train_sft

            result = train_sft(cfg, args.run_dir)
        elif args.command == "generate":
            result = run_generate(cfg, args.run_dir)
        elif args.command == "train-reward":
            from .train_reward import train_reward_model

            result = train_reward_model(cfg, args.run_dir)
        elif args.command in POLICY_RUNNERS:
            module, name = POLICY_RUNNERS[args.command]
            result = getattr(importlib.import_module(module, __package__), name)(cfg, args.run_dir)
        else:
            result = run_evaluate(cfg, args.run_dir)
    except Exception as e:
        log.error("%s failed: %s: %s", args.command, type(e).__name__, e)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0
