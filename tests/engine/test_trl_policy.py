"""GRPO, RLOO and DPO through TRL: on the shipped demo base, GRPO and RLOO correct what it was taught to say
wrong; on the tiny test model, DPO raises the held-out preference margin; parameters change and the run
directory follows the contract."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlhf.engine.config import load_config
from rlhf.engine.demo import DEMO_POLICY_LORA
from tests.learning import learning_seed, record


def _adapter_moved(ckpt) -> float:
    """Largest |lora_B| of a saved adapter (LoRA's B starts at exactly zero)."""
    weights = load_file(ckpt / "adapter_model.safetensors")
    return max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k)


def _group_config(kind, demo_model_path, demo_dataset, held_out_prompts, **overrides):
    """GRPO / RLOO on the shipped demo base with the demo model's RL configuration (q/v LoRA + lm_head in full),
    rewarded by the ground truth, evaluated on 160 held-out scenes × 4 sampled answers."""
    data = {"model": {"path": str(demo_model_path), "device": "cpu", **DEMO_POLICY_LORA},
            "prompts_file": str(demo_dataset["prompts"]), "eval_file": str(held_out_prompts),
            "verifiable_reward": "demo_reward", "steps": GROUP_STEPS, "batch_size": 64, "num_generations": 4,
            "eval_prompts": 160, "max_new_tokens": 24, "lr": 3e-3, "seed": 1, "threads": 1}
    return load_config(kind, {**data, **overrides})


def _assert_learned(name, result, run_dir, steps):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    entropy = [r["entropy"] for r in rows if "entropy" in r]
    before, after = result["eval_before/reward_sampled"], result["eval/reward_sampled"]
    greedy_change = result["eval/reward_mean"] - result["eval_before/reward_mean"]
    record(name, sampled_gain=after - before, greedy_change=greedy_change,
           entropy_drop=sum(entropy[:5]) - sum(entropy[-5:]))
    assert _adapter_moved(run_dir / "checkpoint") > 0
    # What the RL objective raises is the reward of sampled answers (T = 1); the greedy answers, reported
    # beside it, must not get worse.
    assert after - before >= GROUP_MIN_SAMPLED_GAIN, f"held-out sampled reward {before:.3f} → {after:.3f}"
    assert greedy_change >= GROUP_MIN_GREEDY_CHANGE, result
    assert rows[-1]["step"] == rows[-1]["total_steps"] == steps


# Set from the spread over seeds 0–9 (bench/learning_spread.py, one torch thread, two runs at a time beside a
# loop benchmark, load 4–6 on 2 cores; docs/benchmarks.md, "Learning tests"):
#   GRPO: sampled gain 0.185 ± 0.008 sd (min 0.177), greedy change +0.111 ± 0.007 (min 0.099);
#   RLOO: sampled gain 0.180 ± 0.008 sd (min 0.164), greedy change +0.089 ± 0.013 (min 0.069).
# The thresholds sit 3–8 sd below the worst seed, and far above what sharpening alone gave on the tiny model
# (0.01–0.05).
GROUP_STEPS = 30
GROUP_MIN_SAMPLED_GAIN = 0.10
GROUP_MIN_GREEDY_CHANGE = 0.03


@pytest.mark.slow
def test_grpo_raises_the_held_out_reward(demo_model_path, demo_dataset, held_out_prompts, tmp_path):
    from rlhf.engine.trl_policy import train_grpo

    seed = learning_seed(1)
    torch.manual_seed(seed)
    cfg = _group_config("grpo", demo_model_path, demo_dataset, held_out_prompts, seed=seed)
    result = train_grpo(cfg, str(tmp_path / "run"))
    _assert_learned("test_grpo_raises_the_held_out_reward", result, tmp_path / "run", GROUP_STEPS)


@pytest.mark.slow
def test_rloo_raises_the_held_out_reward(demo_model_path, demo_dataset, held_out_prompts, tmp_path):
    from rlhf.engine.trl_policy import train_rloo

    seed = learning_seed(1)
    torch.manual_seed(seed)
    cfg = _group_config("rloo", demo_model_path, demo_dataset, held_out_prompts, seed=seed)
    result = train_rloo(cfg, str(tmp_path / "run"))
    _assert_learned("test_rloo_raises_the_held_out_reward", result, tmp_path / "run", GROUP_STEPS)


@pytest.mark.slow
def test_dpo_raises_the_preference_margin_on_held_out_pairs(tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.trl_policy import train_dpo

    seed = learning_seed(1)
    torch.manual_seed(seed)
    # lr 1e-2 (the test's earlier setting) lowered the held-out margin on some builds (2.37 → 1.37)
    cfg = load_config("dpo", {"model": {"path": str(tiny_model_path), "device": "cpu", **DEMO_POLICY_LORA},
                              "train_file": str(demo_dataset["preferences"]), "steps": 30, "batch_size": 8,
                              "lr": 1e-3, "eval_pairs": 48, "seed": seed, "threads": 1})
    result = train_dpo(cfg, str(tmp_path / "run"))
    assert _adapter_moved(tmp_path / "run" / "checkpoint") > 0
    before, after = result["eval_before/logprob_margin"], result["eval/logprob_margin"]
    record("test_dpo_raises_the_preference_margin_on_held_out_pairs", margin_gain=after - before)
    assert after - before >= DPO_MIN_MARGIN_GAIN, f"log π(chosen) − log π(rejected) on held-out pairs: {before:.3f} → {after:.3f}"


# Spread over seeds 0–9 (as above): held-out margin gain 1.71 ± 0.58 sd (min 0.76, max 2.57); a DPO that does
# not learn moves it by ±0.05.
DPO_MIN_MARGIN_GAIN = 0.1
