"""GRPO, RLOO and DPO through TRL on the tiny demo model: parameters change, the reward / preference margin
moves the right way, and the run directory follows the contract."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlhf.engine.config import load_config


def _adapter_moved(ckpt) -> float:
    """Largest |lora_B| of a saved adapter (LoRA's B starts at exactly zero)."""
    weights = load_file(ckpt / "adapter_model.safetensors")
    return max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k)


def test_combined_reward_adds_the_weighted_verifiable_reward():
    from rlhf.engine.rl_common import CombinedReward

    gt = {"count": 1, "objects": [{"size": "small", "color": "red", "shape": "circle", "box": [0, 0, 1, 1]}]}

    def constant_scorer(prompts, completions, images=None, **kw):
        return [0.5] * len(completions)

    reward = CombinedReward(constant_scorer, "demo_reward", weight=2.0)
    out = reward(["Describe the image."] * 2, ["one shape: a small red circle.", "two shapes."],
                 images=[[], []], ground_truth=[json.dumps(gt), gt])
    assert out == pytest.approx([0.5 + 2.0 * 1.0, 0.5 + 2.0 * 0.0])


@pytest.mark.slow
@pytest.mark.xfail(
    reason="issue 4: on the tiny test model GRPO barely moves the held-out reward within minutes: RL's quick gain "
    "there is sharpening the answer distribution, which a LoRA on q/v can hardly do (the final RMSNorm undoes a "
    "change of scale; docs/policy.md), and TRL's GRPO refuses a LoRA on lm_head. bench/policy.py measured "
    "+0.008 and +0.018 held-out sampled reward in 100 steps of 64 answers, within noise; the greedy comparison "
    "below (8 steps) is a coin flip, so it stays non-strict",
    strict=False,
)
def test_grpo_changes_the_adapter_and_does_not_lower_the_reward(tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.trl_policy import train_grpo

    torch.manual_seed(0)
    cfg = load_config("grpo", {"model": {"path": str(tiny_model_path), "device": "cpu"},
                               "prompts_file": str(demo_dataset["prompts"]), "verifiable_reward": "demo_reward",
                               "steps": 8, "batch_size": 16, "num_generations": 4, "eval_prompts": 32,
                               "max_new_tokens": 20, "seed": 1, "threads": 2})
    result = train_grpo(cfg, str(tmp_path / "run"))
    assert _adapter_moved(tmp_path / "run" / "checkpoint") > 0
    assert result["eval/reward_mean"] >= result["eval_before/reward_mean"], result
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == rows[-1]["total_steps"] == 8
    assert any("reward" in r for r in rows)


@pytest.mark.slow
def test_rloo_runs_and_writes_an_adapter(tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.trl_policy import train_rloo

    cfg = load_config("rloo", {"model": {"path": str(tiny_model_path), "device": "cpu"},
                               "prompts_file": str(demo_dataset["prompts"]), "verifiable_reward": "demo_reward",
                               "steps": 2, "batch_size": 8, "num_generations": 4, "eval_prompts": 4,
                               "max_new_tokens": 12, "threads": 2})
    result = train_rloo(cfg, str(tmp_path / "run"))
    assert result["steps"] == 2 and _adapter_moved(tmp_path / "run" / "checkpoint") > 0


@pytest.mark.slow
def test_dpo_raises_the_preference_margin_on_held_out_pairs(tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.trl_policy import train_dpo

    torch.manual_seed(0)
    cfg = load_config("dpo", {"model": {"path": str(tiny_model_path), "device": "cpu"},
                              "train_file": str(demo_dataset["preferences"]), "steps": 15, "batch_size": 8,
                              "lr": 1e-2, "eval_pairs": 48, "seed": 1, "threads": 2})
    result = train_dpo(cfg, str(tmp_path / "run"))
    assert _adapter_moved(tmp_path / "run" / "checkpoint") > 0
    before, after = result["eval_before/logprob_margin"], result["eval/logprob_margin"]
    assert after > before + 0.05, f"log π(chosen) − log π(rejected) on held-out pairs: {before:.3f} → {after:.3f}"
