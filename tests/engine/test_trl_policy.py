"""GRPO, RLOO and DPO through TRL on the tiny demo model: parameters change, the reward / preference margin
moves the right way, and the run directory follows the contract."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlhf.engine.config import load_config
from rlhf.engine.demo import DEMO_POLICY_LORA


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


def _group_config(kind, tiny_model_path, demo_dataset, held_out_prompts, **overrides):
    """GRPO / RLOO on the demo model's RL configuration (q/v LoRA + lm_head in full), rewarded by the
    ground truth, evaluated on 160 held-out scenes × 4 sampled answers."""
    data = {"model": {"path": str(tiny_model_path), "device": "cpu", **DEMO_POLICY_LORA},
            "prompts_file": str(demo_dataset["prompts"]), "eval_file": str(held_out_prompts),
            "verifiable_reward": "demo_reward", "steps": 60, "batch_size": 64, "num_generations": 4,
            "eval_prompts": 160, "max_new_tokens": 20, "lr": 3e-3, "seed": 1, "threads": 1}
    return load_config(kind, {**data, **overrides})


def _assert_learned(result, run_dir, steps):
    assert _adapter_moved(run_dir / "checkpoint") > 0
    # What the RL objective raises is the reward of sampled answers (T = 1); greedy answers are reported
    # too and must not collapse (sharpening moves the mode a little: -0.04 measured).
    before, after = result["eval_before/reward_sampled"], result["eval/reward_sampled"]
    assert after >= before + 0.02, f"held-out sampled reward {before:.3f} → {after:.3f}"
    assert result["eval/reward_mean"] >= result["eval_before/reward_mean"] - 0.08, result
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == rows[-1]["total_steps"] == steps
    entropy = [r["entropy"] for r in rows if "entropy" in r]
    assert sum(entropy[-10:]) < sum(entropy[:10]), "the answer distribution should sharpen"


@pytest.mark.slow
def test_grpo_raises_the_held_out_reward(tiny_model_path, demo_dataset, held_out_prompts, tmp_path):
    from rlhf.engine.trl_policy import train_grpo

    torch.manual_seed(0)
    cfg = _group_config("grpo", tiny_model_path, demo_dataset, held_out_prompts)
    result = train_grpo(cfg, str(tmp_path / "run"))
    _assert_learned(result, tmp_path / "run", 60)


@pytest.mark.slow
def test_rloo_raises_the_held_out_reward(tiny_model_path, demo_dataset, held_out_prompts, tmp_path):
    from rlhf.engine.trl_policy import train_rloo

    torch.manual_seed(0)
    cfg = _group_config("rloo", tiny_model_path, demo_dataset, held_out_prompts)
    result = train_rloo(cfg, str(tmp_path / "run"))
    _assert_learned(result, tmp_path / "run", 60)


@pytest.mark.slow
def test_dpo_raises_the_preference_margin_on_held_out_pairs(tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.trl_policy import train_dpo

    torch.manual_seed(0)
    # lr 1e-2 (the test's earlier setting) lowered the held-out margin on some builds (2.37 → 1.37)
    cfg = load_config("dpo", {"model": {"path": str(tiny_model_path), "device": "cpu", **DEMO_POLICY_LORA},
                              "train_file": str(demo_dataset["preferences"]), "steps": 30, "batch_size": 8,
                              "lr": 1e-3, "eval_pairs": 48, "seed": 1, "threads": 2})
    result = train_dpo(cfg, str(tmp_path / "run"))
    assert _adapter_moved(tmp_path / "run" / "checkpoint") > 0
    before, after = result["eval_before/logprob_margin"], result["eval/logprob_margin"]
    assert after > before + 0.05, f"log π(chosen) − log π(rejected) on held-out pairs: {before:.3f} → {after:.3f}"
