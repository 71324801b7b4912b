"""The parameters of one round of the loop, in one place.

A round trains a reward model, then the policy (PPO, GRPO, DPO or SFT), evaluates it and samples new
candidates. `RoundConfig` holds every parameter an admin or a script may set for it — help, label and
bounds on each field — and says which engine config each step runs with (`reward_config`,
`policy_config`, `evaluate_config`, `generate_config`). Everything else is derived from it: the launch
form and the REST serializer (`rlhf.forms`, `rlhf.api`), the defaults a project starts from, and the
check that a round's every engine config validates before anything is queued (`check_engine_configs`).

Stdlib only, like the configs it builds (the Django web tier imports it).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

from .config import build, load_config
from .config_base import PEFT_METHOD_CHOICES, ConfigError, check, option, prompt_tuning_refusal
from .reward_terms import Term, legacy_terms, parse_terms, uses_reward_model

ALGORITHMS = {
    "ppo": "PPO: reward model, then policy optimisation against it (default)",
    "grpo": "GRPO: group-relative policy optimisation against the reward model",
    "dpo": "DPO: optimise directly on the preference pairs",
    "sft": "SFT: fine-tune on the answers ranked first",
}
ENGINE_DEFAULT = "the engine's default"

# Field groups, as the launch page shows them: the first fields, the algorithm's, the folded "more", and
# the engine settings a project keeps in its loop settings (set through the API or the admin).
MAIN, ALGORITHM, MORE, ADVANCED = "main", "algorithm", "more", "advanced"


@dataclass
class RoundConfig:
    """The parameters of one round: export → reward model → policy → evaluate → register → generate."""

    algorithm: str = option("ppo", "PPO, GRPO, DPO or SFT: how the policy learns from the rankings (step 3).",
                            label="Algorithm",
                            choices=ALGORITHMS, group=MAIN)
    policy_steps: int = option(40, "Optimisation steps of the policy.", label="Policy steps", min=1,
                               max=1_000_000, group=MAIN)
    lr: float = option(0.0, "0 = the engine's default for the algorithm.", label="Learning rate", min=0.0,
                       group=MAIN, empty=ENGINE_DEFAULT)
    lora_r: int = option(8, "Rank of the LoRA adapter of the reward model and the policy.", label="LoRA rank", min=1, max=256,
                         group=MAIN)
    qlora: bool = option(False, "Load the base weights in 4-bit (NF4) and train the LoRA adapter on top; offered "
                         "only where the training workers have CUDA.",
                         label="QLoRA", group=MAIN)
    peft_method: str = option("lora", "The adapter the policy learns, and the reward model when it trains as an "
                              "adapter (reward_lora): all but bottleneck adapters and prompt tuning sit on the LoRA target "
                              "modules. A "
                              "policy that continues an earlier version keeps that version's method. Measured side "
                              "by side in docs/benchmarks.md.", label="PEFT method", choices=PEFT_METHOD_CHOICES,
                              group=MORE)
    kl_coef: float = option(0.05, "PPO and GRPO (TRL's beta): how hard the policy is held near the reference policy.",
                            label="KL coefficient", min=0.0, group=ALGORITHM)
    beta: float = option(0.1, "DPO: strength of the implicit KL constraint.", label="DPO β", min=0.0,
                         group=ALGORITHM)
    reward_epochs: float = option(3.0, "Passes of the reward model over the preference pairs.", label="Reward-model epochs", min=0.1,
                                  max=1000.0, group=MORE)
    generate_prompts: int = option(64, "Step 6: the new policy answers this many prompts, K candidates each, as "
                                   "new ranking tasks.", label="Prompts to sample", min=1, max=100_000,
                                   group=MORE)
    temperature: float = option(1.0, "Temperature of the new candidates' sampling (step 6).", label="Sampling temperature",
                                min=0.01, max=5.0, group=MORE)
    lora_target_modules: list[str] = option([], "Modules that get the LoRA adapter; [] = q_proj and v_proj of "
                                            "the language model.", label="LoRA target modules", group=ADVANCED,
                                            empty="q_proj, v_proj (" + ENGINE_DEFAULT + ")")
    lora_modules_to_save: list[str] = option([], "Modules trained in full beside the adapter and saved with "
                                             "it (PEFT modules_to_save), e.g. [\"lm_head\"].", label="Modules trained in full", group=ADVANCED)
    reward_lr: float = option(0.0, "The reward model's learning rate; 0 = the engine's default.",
                              label="Reward-model learning rate", min=0.0, group=ADVANCED, empty=ENGINE_DEFAULT)
    reward_lora: bool = option(True, "Train the reward model as a LoRA adapter; false trains every weight of "
                               "its backbone instead and saves it whole, for small models (not with qlora). On the "
                               "demo base that gained 0.015–0.022 held-out pair accuracy on one round's data and "
                               "nothing reliable in a whole loop (docs/benchmarks.md).", label="Reward model as a LoRA adapter",
                               group=ADVANCED)
    confidence_weighting: str = option("auto", "Train the reward model on each pair's confidence (the reliability "
                                       "model's posterior that the pair is the right way round, from the quality "
                                       "report, recomputed before the export when stale): a pair that is probably "
                                       "reversed teaches the other way, an uncertain one little. auto = on when the "
                                       "project has overlap > 1 or gold tasks (otherwise no pair has a second "
                                       "opinion to weigh it by).", label="Weight pairs by confidence",
                                       choices={"auto": "auto: on with overlap > 1 or gold tasks", "on": "on",
                                                "off": "off"}, group=ADVANCED)
    policy_batch_size: int = option(0, "Answers per policy step (PPO rollouts, GRPO prompts × K, DPO pairs); 0 = "
                                    "the engine's default.", label="Answers per policy step", min=0, group=ADVANCED,
                                    empty=ENGINE_DEFAULT)
    use_reward_model: bool = option(True, "False: PPO or GRPO trains on the verifiable reward alone, a benchmark's "
                                    "upper bound (the round's reward model is still trained and registered).",
                                    label="Reward model in the policy's reward", group=ADVANCED)
    verifiable_reward: str = option("", "A ground-truth reward (e.g. demo_reward) added to the reward model's "
                                    "score, when the prompts carry ground truth; '' = none.", label="Verifiable reward", group=ADVANCED)
    verifiable_weight: float = option(1.0, "Weight of the verifiable reward in the policy's reward.",
                                      label="Weight of the verifiable reward", min=0.0, group=ADVANCED)
    reward: list[dict] = option([], "PPO and GRPO: the policy's reward composed of weighted terms, instead of "
                                "use_reward_model / verifiable_reward / verifiable_weight; each term "
                                "{\"reward\": name, \"weight\": w, \"params\": {...}}, the name 'reward_model' (the "
                                "round's reward model), a built-in (banned_words, length, format, json_schema, "
                                "exact_match, accuracy, iou), a verifiable reward, or 'package.module:function'. "
                                "[] = reward model + verifiable_weight × verifiable_reward.",
                                label="Composed reward", group=ADVANCED, empty="reward model (+ verifiable reward)")

    # ---- checks ---------------------------------------------------------------------------------------

    def validate(self) -> None:
        """The bounds of every field, then what the fields say together. ConfigError names the field."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if "choices" in meta:
                check(value in meta["choices"], f"{f.name} must be one of {list(meta['choices'])}, not {value!r}")
            if "min" in meta and value < meta["min"]:
                check(False, f"{f.name}={value}: must be at least {meta['min']:g}")
            if "max" in meta and value > meta["max"]:
                check(False, f"{f.name}={value}: must be at most {meta['max']:g}")
            if isinstance(value, list):
                check(all(v for v in value), f"{f.name} must be a list of module names (or one regex), "
                      'e.g. ["q_proj", "v_proj"]')
        check(not self.qlora or self.reward_lora,
              "qlora needs reward_lora=true: 4-bit weights are frozen, only an adapter on them trains")
        if self.verifiable_reward:
            from .rewards import REWARDS  # plain Python, no torch

            check(self.verifiable_reward in REWARDS,
                  f"verifiable_reward {self.verifiable_reward!r} is not one of {sorted(REWARDS)}")
        if self.reward:
            terms = parse_terms(self.reward)
            check(not self.verifiable_reward and self.use_reward_model,
                  "a composed reward replaces verifiable_reward and use_reward_model=false: put the verifiable "
                  "reward in `reward` as a term, and leave out the reward_model term instead")
            check(uses_reward_model(terms) or self.algorithm in ("ppo", "grpo"),
                  f"a reward without the reward_model term needs algorithm ppo or grpo ({self.algorithm} trains "
                  "on the rankings themselves)")
        if not self.use_reward_model:
            check(self.algorithm in ("ppo", "grpo"), f"use_reward_model=false needs algorithm ppo or grpo "
                  f"({self.algorithm} trains on the rankings themselves)")
            check(bool(self.verifiable_reward), "use_reward_model=false needs a verifiable_reward to train the "
                  "policy on")

    def check_engine_configs(self, base_model: str) -> None:
        """Build and validate the engine config of every step of this round, with stand-in file names (the
        files exist only once the round runs): a value the engine would refuse minutes later, in a
        subprocess, is refused now. ConfigError says which step and which round field."""
        here = "<files of the round>"
        configs = {
            "train-reward": self.reward_config(base_model=base_model, train_file=here, seed=0),
            self.algorithm: self.policy_config(base_model=base_model, seed=0, prompts_file=here, records=here,
                                               top_ranked=here, reward_model_path=here),
            "evaluate": self.evaluate_config(model=self.model(base_model), prompts_file=here, heldout=True),
            "generate": self.generate_config(model=self.model(base_model), prompts_file=here, model_version="",
                                             k=1, seed=0),
        }
        model_type = _model_type(base_model) if self.peft_method == "prompt_tuning" else None
        if model_type is not None and (refused := prompt_tuning_refusal(model_type)):
            raise ConfigError(f"peft_method: {refused}")
        for kind, data in configs.items():
            try:
                load_config(kind, data)
            except ConfigError as e:
                names = ", ".join(f"{engine} is the round's {ours}" for engine, ours in ENGINE_NAMES.get(kind, {}).items()
                                  if engine in str(e))
                raise ConfigError(f"the {kind} step would refuse this round: {e}" + (f" ({names})" if names else "")) from None

    def policy_terms(self) -> list[Term]:
        """The PPO / GRPO reward as terms: `reward`, else the reward model (use_reward_model) +
        verifiable_weight × verifiable_reward."""
        if self.reward:
            return parse_terms(self.reward)
        return legacy_terms(reward_model=self.use_reward_model, verifiable=self.verifiable_reward,
                            weight=self.verifiable_weight)

    # ---- the engine configs of the steps ---------------------------------------------------------------

    def model(self, base_model: str, adapter_path: str = "") -> dict:
        """The policy's `model` section: the base, the version's adapter to continue, the round's LoRA."""
        cfg: dict = {"path": base_model, "lora_r": self.lora_r, "qlora": self.qlora, "peft_method": self.peft_method}
        if self.lora_target_modules:
            cfg["lora_target_modules"] = list(self.lora_target_modules)
        if self.lora_modules_to_save:
            cfg["lora_modules_to_save"] = list(self.lora_modules_to_save)
        if adapter_path:
            cfg["adapter_path"] = adapter_path
        return cfg

    def reward_config(self, *, base_model: str, train_file: str, eval_file: str = "", seed: int,
                      confidence_weighting: bool | None = None) -> dict:
        """`train-reward`: the reward model on the round's training pairs, measured on the held-out ones.
        ``confidence_weighting``: what `auto` came to for the project (`rlhf.steps`); None reads "on" alone."""
        if confidence_weighting is None:
            confidence_weighting = self.confidence_weighting == "on"
        config = {
            "model": {"path": base_model, "lora": self.reward_lora, "lora_r": self.lora_r, "qlora": self.qlora,
                      # a reward model trained in full (reward_lora false) has no adapter to choose
                      "peft_method": self.peft_method if self.reward_lora else "lora"},
            "train_file": train_file,
            "eval_file": eval_file,
            "epochs": self.reward_epochs,
            "seed": seed,
            "confidence_weighting": bool(confidence_weighting),
        }
        if self.reward_lr:
            config["lr"] = self.reward_lr
        return config

    def policy_config(self, *, base_model: str, adapter_path: str = "", seed: int, prompts_file: str = "",
                      eval_prompts: str = "", records: str = "", heldout_records: str = "", top_ranked: str = "",
                      reward_model_path: str = "") -> dict:
        """The policy step (`self.algorithm`): PPO/GRPO on the training prompts against the reward model (and
        the verifiable reward), DPO on the pairs, SFT on the answers ranked first."""
        config: dict = {"model": self.model(base_model, adapter_path), "steps": self.policy_steps, "seed": seed}
        if self.lr:
            config["lr"] = self.lr
        if self.policy_batch_size:
            config["batch_size"] = self.policy_batch_size
        if self.algorithm in ("ppo", "grpo"):
            terms = self.policy_terms()
            config.update(prompts_file=prompts_file, eval_file=eval_prompts,
                          reward_model_path=reward_model_path if uses_reward_model(terms) else "")
            if self.reward:
                config["reward"] = [t.to_json() for t in terms]
            elif self.verifiable_reward:
                config.update(verifiable_reward=self.verifiable_reward, verifiable_weight=self.verifiable_weight)
            # The KL coefficient holds either algorithm near the reference (GRPO: TRL's beta). Without it GRPO
            # chased the first round's weak reward model and lost 5 points (bench/loop.py).
            config["kl_coef" if self.algorithm == "ppo" else "beta"] = self.kl_coef
        elif self.algorithm == "dpo":
            config.update(train_file=records, beta=self.beta, eval_file=heldout_records)
        else:
            config["train_file"] = top_ranked
        return config

    def evaluate_config(self, *, model: dict, prompts_file: str, heldout: bool, baseline: dict | None = None,
                        verifiable_reward: str = "", answer_reward_model_path: str = "",
                        reward_model_path: str = "", preference_file: str = "") -> dict:
        """`evaluate`: the new policy (and the active one, `baseline`) on the held-out prompts."""
        config: dict = {"model": model, "prompts_file": prompts_file, "heldout": heldout,
                        "answer_reward_model_path": answer_reward_model_path}
        if baseline is not None:
            config["baseline"] = baseline
        if verifiable_reward:
            config["verifiable_reward"] = verifiable_reward
        if reward_model_path:
            config.update(reward_model_path=reward_model_path, preference_file=preference_file)
        return config

    def generate_config(self, *, model: dict, prompts_file: str, model_version: str, k: int, seed: int,
                        reward_model_path: str = "") -> dict:
        """`generate`: K candidates per prompt at the round's temperature; with the active reward model's
        scores when there is one (uncertainty-first task priorities)."""
        config = {"model": model, "prompts_file": prompts_file, "model_version": model_version, "k": k,
                  "temperature": self.temperature, "seed": seed}
        if reward_model_path:
            config["reward_model_path"] = reward_model_path
        return config


# Engine fields a round sets under another name, for the messages of check_engine_configs.
ENGINE_NAMES = {
    "train-reward": {"epochs": "reward_epochs", "lr": "reward_lr"},
    **{algorithm: {"steps": "policy_steps", "batch_size": "policy_batch_size"} for algorithm in ALGORITHMS},
}


def fields(group: str | None = None) -> list[dataclasses.Field]:
    """The round's fields (of one group), in order."""
    return [f for f in dataclasses.fields(RoundConfig) if group is None or f.metadata["group"] == group]


def defaults(*groups: str) -> dict:
    """Default value of each field of ``groups`` (all fields when none are named)."""
    cfg = RoundConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not groups or f.metadata["group"] in groups}


def hint(name: str):
    """The Python type of field ``name`` (int, float, bool, str, list[str])."""
    return typing.get_type_hints(RoundConfig)[name]


def round_config(params: dict | None) -> RoundConfig:
    """A validated RoundConfig from JSON-like parameters (missing ones take their defaults)."""
    cfg = build(RoundConfig, dict(params or {}), "round")
    cfg.validate()
    return cfg


def ground_truth_reward(params: dict | None) -> str:
    """The verifiable reward in a round's (saved) parameters: `verifiable_reward`, else the first term of
    `reward` that names one of rewards.REWARDS; "" when none. What the evaluation, the promotion gate and
    `mark_gold` score answers with."""
    from .rewards import REWARDS

    params = params or {}
    if params.get("verifiable_reward"):
        return params["verifiable_reward"]
    names = [t.get("reward") for t in params.get("reward") or [] if isinstance(t, dict)]
    return next((n for n in names if isinstance(n, str) and n in REWARDS), "")


def to_params(cfg: RoundConfig) -> dict:
    """Every parameter of ``cfg`` as JSON (what a round run stores)."""
    return dataclasses.asdict(cfg)


def _model_type(base_model: str) -> str | None:
    """The `model_type` of a base model folder's config.json ('demo' is the shipped LLaVA demo); None where it
    cannot be read here (a hub id: the engine checks it when it loads the model)."""
    if base_model == "demo":
        return "llava"
    try:
        return json.loads((Path(base_model) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
