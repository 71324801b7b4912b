"""Configs of the policy-optimisation subcommands: `ppo`, `grpo`, `rloo`, `dpo` (help on every field).

Stdlib only, like `config.py` (the Django web tier imports these). `validate()` checks what a config
alone can tell; `preflight(cfg, world_size)` also reads the files a run needs (prompt set, the reward
model's meta file, both processors' tokenizer files) and checks batch sizes against the number of
processes — all before any model loads, every message naming the field to change.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config_base import ModelConfig, check, option
from .reward_terms import Term, dry_run, dry_run_sample, legacy_terms, parse_terms, uses_reward_model


@dataclass
class OnlineConfig:
    """What PPO, GRPO and RLOO share: the policy, the prompts it answers and the held-out ones it is
    measured on, the reward (reward-model score + weight × verifiable reward), sampling and the budget."""

    model: ModelConfig = option(ModelConfig(), "The policy (base + LoRA); the reference is the same weights "
                                "with the adapter disabled.")
    prompts_file: str = option("", "Prompt-set JSONL (prompt_id, images, prompt, ground_truth?); images relative "
                               "to its folder. Lines with \"split\": \"eval\" are held out for evaluation.")
    eval_file: str = option("", "Optional held-out prompt set for eval/reward_mean; empty = the prompts_file lines "
                            "marked split=eval (never trained on), else its first `eval_prompts` training prompts, "
                            "whose figures are then named train/… (not held out).")
    eval_prompts: int = option(32, "Prompts in the held-out evaluation (greedy answers, mean reward).")
    eval_every: int = option(0, "Evaluate every N steps (0 = only before and after training); eval time is "
                             "excluded from train_seconds.")
    reward_model_path: str = option("", "Reward-model checkpoint folder (the checkpoint/ of a train-reward run); "
                                    "may be empty when `verifiable_reward` is set (demo, benchmark).")
    verifiable_reward: str = option("", "Name of a verifiable reward in rewards.REWARDS (e.g. 'demo_reward'), "
                                    "scored against each prompt's `ground_truth`; empty = none.")
    verifiable_weight: float = option(1.0, "Weight w of the verifiable reward: reward = RM score + w · verifiable.")
    reward: list[dict] = option([], "A composed reward, instead of the two fields above: a list of terms "
                                "{\"reward\": name, \"weight\": w, \"params\": {...}}, the reward a weighted sum of "
                                "them; a name is 'reward_model' (the reward_model_path checkpoint), a built-in "
                                "(banned_words, length, format, json_schema, exact_match, accuracy, iou), a "
                                "verifiable reward of rewards.REWARDS, or a function 'package.module:function' "
                                "(docs/engine.md, \"Composed rewards\"). [] = reward model + w · verifiable reward.")
    steps: int = option(20, "Optimiser steps.")
    seed: int = option(0, "Seed for sampling, batch order and initialisation.")
    lr: float = option(3e-3, "Learning rate of the LoRA adapter (constant).")
    batch_size: int = option(16, "Answers per optimiser step over all processes.")
    max_new_tokens: int = option(24, "Longest sampled answer in tokens.")
    temperature: float = option(1.0, "Sampling temperature.")
    max_grad_norm: float = option(1.0, "Gradient-norm clip.")
    threads: int = option(0, "torch CPU threads (0 = leave torch's default).")

    def validate(self) -> None:
        from .rewards import REWARDS  # plain Python, no torch

        self.model.validate()
        if self.reward:
            check(not self.verifiable_reward, "set either `reward` (a composed reward) or `verifiable_reward`, "
                  "not both: add the verifiable reward to `reward` as a term")
            terms = self.reward_terms()
            check(uses_reward_model(terms) == bool(self.reward_model_path),
                  "a reward term 'reward_model' needs reward_model_path (a train-reward checkpoint)"
                  if uses_reward_model(terms) else
                  "reward_model_path is set but no term of `reward` is 'reward_model': add the term or clear the path")
        else:
            check(bool(self.reward_model_path) or bool(self.verifiable_reward),
                  "no reward: set reward_model_path (a train-reward checkpoint) and/or verifiable_reward "
                  f"(one of {sorted(REWARDS)}), or a composed `reward`")
            check(not self.verifiable_reward or self.verifiable_reward in REWARDS,
                  f"verifiable_reward={self.verifiable_reward!r} is unknown; use one of {sorted(REWARDS)} or ''")
        check(bool(self.prompts_file), "prompts_file is empty: give a prompt-set JSONL")
        check(self.steps >= 1 and self.lr > 0, "steps must be >= 1 and lr positive")
        check(self.batch_size >= 1, "batch_size must be at least 1")
        check(self.temperature > 0 and self.max_new_tokens >= 1, "temperature must be > 0, max_new_tokens >= 1")
        check(self.eval_prompts >= 0 and self.eval_every >= 0, "eval_prompts and eval_every must be >= 0")

    def reward_terms(self) -> list[Term]:
        """The policy's reward as terms (reward_terms.py): `reward`, else the reward model (when
        reward_model_path is set) + verifiable_weight × verifiable_reward."""
        if self.reward:
            return parse_terms(self.reward)
        return legacy_terms(reward_model=bool(self.reward_model_path), verifiable=self.verifiable_reward,
                            weight=self.verifiable_weight)


@dataclass
class PPOConfig(OnlineConfig):
    """PPO for a VLM policy with LoRA (Schulman et al. 2017; Ouyang et al. 2022), our implementation
    (TRL 1.x has no PPO trainer). One iteration = rollout of `batch_size` answers + `ppo_epochs` passes."""

    steps: int = option(20, "PPO iterations (rollout + optimisation).")
    lr: float = option(3e-3, "AdamW learning rate of the LoRA adapter and the value head (constant).")
    batch_size: int = option(16, "Rollouts (prompt + one sampled answer) per iteration, over all processes.")
    temperature: float = option(1.0, "Sampling temperature T. The policy PPO optimises is the tempered one: "
                                "rollout, training and reference log-probs all use logits / T.")
    num_mini_batches: int = option(2, "Minibatches per PPO epoch; batch_size / processes must divide by it.")
    gradient_accumulation_steps: int = option(1, "Micro-batches per minibatch (memory knob; same maths).")
    ppo_epochs: int = option(2, "Passes over each rollout batch (K epochs of Schulman et al. 2017).")
    kl_coef: float = option(0.05, "β of the per-token KL penalty to the reference (initial value if adaptive).")
    kl_estimator: str = option("k1", "Per-token KL estimator in the reward: 'k1' = log π − log π_ref "
                               "(Ziegler et al. 2019), 'k3' = (r − 1) − log r, r = π_ref/π (Schulman 2020).")
    target_kl: float = option(0.0, "Adaptive β (Ziegler et al. 2019 §2.2) towards this KL per answer; 0 = fixed β.")
    kl_horizon: int = option(10000, "Horizon of the adaptive KL controller (rollouts).")
    missing_eos_penalty: float = option(1.0, "Subtracted from the score of an answer cut off without an EOS token.")
    score_norm: bool = option(True, "Normalise the sequence scores with the running mean and std of all scores so "
                              "far before the KL penalty is added (TRL PPOTrainer use_score_norm).")
    whiten_rewards: bool = option(False, "Also whiten the per-token rewards over the batch (keeping their mean) "
                                  "before GAE, as TRL's PPOv2 `whiten_rewards`. Off: with sparse rewards it gives "
                                  "every token the same offset, a length bias.")
    gamma: float = option(1.0, "Discount γ of GAE.")
    lam: float = option(0.95, "λ of GAE (Schulman et al. 2016).")
    cliprange: float = option(0.2, "ε of the clipped policy objective.")
    cliprange_value: float = option(0.2, "ε_v of the clipped value loss.")
    vf_coef: float = option(0.1, "Weight of the value loss in the shared-backbone loss.")
    resume_from: str = option("", "Checkpoint folder to resume (adapter, value head, optimizer, iteration); "
                              "'auto' = <run dir>/checkpoint when present.")
    checkpoint_every: int = option(0, "Write the checkpoint every N iterations as well as at the end (0 = end "
                                   "only).")

    def validate(self) -> None:
        super().validate()
        check(self.num_mini_batches >= 1 and self.gradient_accumulation_steps >= 1 and self.ppo_epochs >= 1,
              "num_mini_batches, gradient_accumulation_steps and ppo_epochs must be at least 1")
        check_ppo_batches(self, 1)
        check(self.kl_estimator in ("k1", "k2", "k3"), f"kl_estimator={self.kl_estimator!r}: use 'k1', 'k2' or 'k3'")
        check(self.kl_coef >= 0 and self.target_kl >= 0, "kl_coef and target_kl must be >= 0")
        check(0 < self.gamma <= 1 and 0 <= self.lam <= 1, "gamma must lie in (0, 1] and lam in [0, 1]")
        check(self.cliprange > 0 and self.cliprange_value > 0, "cliprange and cliprange_value must be positive")
        check(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")


def check_ppo_batches(cfg: PPOConfig, world_size: int) -> tuple[int, int, int]:
    """(local batch, minibatch, micro-batch) per process, derived once with exact divisions
    ("N implementation details of RLHF", derived batch sizes); a ConfigError says what to change."""
    check(cfg.batch_size % world_size == 0,
          f"batch_size={cfg.batch_size} does not divide by the {world_size} processes: make batch_size a "
          f"multiple of {world_size}")
    local = cfg.batch_size // world_size
    check(local % cfg.num_mini_batches == 0,
          f"batch_size / processes = {local} does not divide into num_mini_batches={cfg.num_mini_batches}: "
          f"make batch_size a multiple of {world_size * cfg.num_mini_batches} or change num_mini_batches")
    mini = local // cfg.num_mini_batches
    check(mini % cfg.gradient_accumulation_steps == 0,
          f"the minibatch of {mini} rollouts does not divide into gradient_accumulation_steps="
          f"{cfg.gradient_accumulation_steps}: use a divisor of {mini}")
    return local, mini, mini // cfg.gradient_accumulation_steps


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO through TRL's GRPOTrainer (Shao et al. 2024, DeepSeekMath §4.1): K answers per prompt,
    advantages relative to the group, no value function."""

    steps: int = option(20, "Optimiser steps (TRL max_steps).")
    batch_size: int = option(16, "Answers per optimiser step over all processes (prompts × K); a multiple of K.")
    num_generations: int = option(4, "K: answers per prompt (the group); must be at least 2.")
    beta: float = option(0.0, "KL coefficient to the reference (adapter disabled); 0 = no reference pass "
                         "(TRL's default since 0.19, after Dr. GRPO / DAPO).")

    def validate(self) -> None:
        super().validate()
        check(self.num_generations >= 2, f"num_generations={self.num_generations}: group-relative advantages "
              "need K >= 2 answers per prompt; set num_generations to 2 or more")
        check(self.batch_size % self.num_generations == 0,
              f"batch_size={self.batch_size} is not a multiple of num_generations={self.num_generations}: "
              f"use e.g. batch_size={self.num_generations * max(1, self.batch_size // self.num_generations)}")
        check(self.beta >= 0, "beta must be >= 0")


@dataclass
class RLOOConfig(GRPOConfig):
    """RLOO through TRL's RLOOTrainer (Ahmadian et al. 2024): K answers per prompt, each answer's baseline
    is the mean reward of the other K − 1. Same fields as grpo."""


@dataclass
class DPOConfig:
    """DPO through TRL's DPOTrainer (Rafailov et al. 2023), reading the exported preference records."""

    model: ModelConfig = option(ModelConfig(), "The policy (base + LoRA); the reference is the adapter disabled.")
    train_file: str = option("", "Preference-records JSONL (export format); images relative to its folder. Lines "
                             "with \"split\": \"eval\" are never trained on: without `eval_file` they are the "
                             "held-out pairs of the margin report.")
    eval_file: str = option("", "Held-out preference records for the log-probability margin report (eval/…); empty = "
                            "the train_file lines marked split=eval, else the first training pairs, reported as "
                            "train/… (not held out).")
    steps: int = option(20, "Optimiser steps (TRL max_steps).")
    seed: int = option(0, "Seed.")
    lr: float = option(1e-3, "Learning rate of the LoRA adapter (constant).")
    beta: float = option(0.1, "β of DPO: strength of the implicit KL to the reference.")
    batch_size: int = option(8, "Pairs per optimiser step over all processes.")
    eval_pairs: int = option(64, "Pairs in the before/after log-probability margin report.")
    max_grad_norm: float = option(1.0, "Gradient-norm clip.")
    threads: int = option(0, "torch CPU threads (0 = leave torch's default).")

    def validate(self) -> None:
        self.model.validate()
        check(bool(self.train_file), "train_file is empty: give a preference-records JSONL")
        check(self.steps >= 1 and self.lr > 0 and self.batch_size >= 1, "steps, batch_size >= 1 and lr > 0")
        check(self.beta > 0, "beta must be positive")


POLICY_CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig, "dpo": DPOConfig}


# ---- preflight: file checks before any model loads ------------------------------------------------------


def world_size() -> int:
    """Processes of this launch (`accelerate launch` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _model_folder(path: str) -> Path | None:
    """The local folder of a model path ('demo' → its cache folder when built), None when unknown."""
    if path == "demo":
        return None  # built on demand with the demo tokenizer; both sides resolve to the same folder
    p = Path(path)
    return p if p.is_dir() else None


def _tokenizer_fingerprint(folder: Path) -> str | None:
    """Hash of the tokenizer's vocabulary file and the image size, or None when the folder has neither."""
    h = hashlib.sha256()
    found = False
    for name in ("tokenizer.json", "vocab.json", "tokenizer.model"):
        if (folder / name).is_file():
            data = (folder / name).read_bytes()
            if name == "tokenizer.json":  # only the vocabulary (padding/truncation settings vary by save)
                data = json.dumps(json.loads(data).get("model", {}), sort_keys=True).encode()
            h.update(data)
            found = True
            break
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (folder / name).is_file():
            conf = json.loads((folder / name).read_text())
            conf = conf.get("image_processor", conf)
            h.update(json.dumps([conf.get("size"), conf.get("crop_size")], sort_keys=True).encode())
            found = True
    return h.hexdigest() if found else None


def check_reward_model_matches(model_path: str, reward_model_path: str) -> None:
    """The reward model must read what the policy writes: same tokenizer vocabulary and image size."""
    rm = Path(reward_model_path)
    check((rm / "reward_model.json").is_file(),
          f"reward_model_path={reward_model_path} holds no reward_model.json: give the checkpoint/ folder of "
          "a train-reward run")
    meta = json.loads((rm / "reward_model.json").read_text())
    rm_folder = rm / "processor" if meta.get("adapter") else rm / "backbone"
    if not rm_folder.is_dir():
        rm_folder = _model_folder(meta.get("base_model", ""))
    policy_folder = _model_folder(model_path)
    if rm_folder is None or policy_folder is None:
        return
    a, b = _tokenizer_fingerprint(policy_folder), _tokenizer_fingerprint(rm_folder)
    check(a is None or b is None or a == b,
          f"the reward model at {reward_model_path} was trained on base {meta.get('base_model')!r}, whose "
          f"tokenizer or image size differs from the policy's processor at {model_path}: train the reward "
          "model on the policy's base model (train-reward with the same model.path)")


def preflight(cfg, n_processes: int | None = None) -> None:
    """Checks that need the files or the process count, run before any model loads."""
    n = world_size() if n_processes is None else n_processes
    for name in ("prompts_file", "train_file", "eval_file"):
        value = getattr(cfg, name, "")
        check(not value or Path(value).is_file(), f"{name}={value} does not exist")
    if cfg.model.adapter_path:
        check((Path(cfg.model.adapter_path) / "adapter_config.json").is_file(),
              f"model.adapter_path={cfg.model.adapter_path} holds no adapter_config.json")
    if isinstance(cfg, PPOConfig):
        check_ppo_batches(cfg, n)
    if isinstance(cfg, GRPOConfig):
        check(cfg.batch_size % n == 0, f"batch_size={cfg.batch_size} does not divide by the {n} processes")
        per = cfg.batch_size // n
        check(per % cfg.num_generations == 0 or cfg.num_generations % per == 0 or n == 1,
              f"batch_size / processes = {per} and num_generations={cfg.num_generations} do not tile the "
              "groups across processes: make batch_size a multiple of processes × num_generations")
    if isinstance(cfg, DPOConfig):
        check(cfg.batch_size % n == 0, f"batch_size={cfg.batch_size} does not divide by the {n} processes")
    if getattr(cfg, "reward_model_path", ""):
        check_reward_model_matches(cfg.model.path, cfg.reward_model_path)
    if isinstance(cfg, OnlineConfig) and cfg.reward:
        check_reward_terms(cfg)


def check_reward_terms(cfg: OnlineConfig) -> None:
    """Every term of a composed reward but the reward model, called once on the first training prompt (its
    reference, else a stand-in answer, as the completion): a user function that does not import, raises or
    returns the wrong number of values stops the run here, before any model loads."""
    from .data import read_prompts

    rows = read_prompts(cfg.prompts_file)
    row = next((r for r in rows if r.get("split") != "eval"), rows[0] if rows else {})
    dry_run(cfg.reward_terms(), dry_run_sample(row))

