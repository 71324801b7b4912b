"""What PPO, GRPO and RLOO share: the reward (reward-model score + weighted verifiable reward), the
train / held-out split of a prompt set (the held-out rule of `heldout.py`), and the held-out evaluation
(greedy answers, mean reward)."""

from __future__ import annotations

import logging

import torch

from .data import load_images, read_prompts
from .heldout import Split, split_lines, warn_not_heldout
from .rewards import REWARDS

log = logging.getLogger(__name__)


class CombinedReward:
    """reward = RM score + w · verifiable reward, a TRL reward function
    `(prompts, completions, images=None, **columns) -> list[float]`.

    `ground_truth` may arrive as dicts or as JSON strings (how the TRL datasets carry it)."""

    __name__ = "reward"

    def __init__(self, scorer=None, verifiable: str = "", weight: float = 1.0):
        if scorer is None and not verifiable:
            raise ValueError("CombinedReward needs a reward-model scorer, a verifiable reward, or both")
        self.scorer, self.weight = scorer, weight
        self.verifiable = REWARDS[verifiable] if verifiable else None

    @classmethod
    def from_config(cls, cfg, device: str = "auto") -> CombinedReward:
        scorer = None
        if cfg.reward_model_path:
            from .reward_model import RewardScorer

            scorer = RewardScorer.from_checkpoint(cfg.reward_model_path, device=device)
        return cls(scorer, cfg.verifiable_reward, cfg.verifiable_weight)

    def __call__(self, prompts, completions, images=None, **kwargs) -> list[float]:
        total = [0.0] * len(completions)
        if self.scorer is not None:
            total = [t + s for t, s in zip(total, self.scorer(prompts, completions, images=images, **kwargs),
                                           strict=True)]
        if self.verifiable is not None:
            if "ground_truth" in kwargs:
                kwargs = {**kwargs, "ground_truth": [_json(g) for g in kwargs["ground_truth"]]}
            v = self.verifiable(prompts, completions, images=images, **kwargs)
            total = [t + self.weight * x for t, x in zip(total, v, strict=True)]
        return total


def _json(x):
    import json

    return json.loads(x) if isinstance(x, str) else x


def split_prompts(cfg) -> Split:
    """Train and measured prompt records under the held-out rule: training never sees a split=eval line;
    the measured set is `eval_file`, else those lines, else the first `eval_prompts` training prompts,
    whose figures are then named `train/…` (``Split.prefix``) and logged as not held out."""
    rows = read_prompts(cfg.prompts_file)
    split = split_lines(rows, read_prompts(cfg.eval_file) if cfg.eval_file else None,
                        train_file=cfg.prompts_file, eval_file=cfg.eval_file)
    if not split.train:
        raise ValueError(f"{cfg.prompts_file}: no training prompts (every line is split=eval)")
    if not split.heldout:
        warn_not_heldout(log, "no eval_file and no split=eval prompts",
                         f"the policy's reward is measured on the first {cfg.eval_prompts} training prompts")
        split.measure = split.train
    split.measure = split.measure[: cfg.eval_prompts]
    return split


@torch.no_grad()
def evaluate_reward(model, processor, records: list[dict], reward_fn, *, max_new_tokens: int = 24,
                    batch_size: int = 32, image_cache: dict | None = None, samples: int = 4,
                    seed: int = 1234, prefix: str = "eval/") -> dict:
    """Held-out reward, the metric every method reports: `eval/reward_mean` of greedy answers and
    `eval/reward_sampled` of `samples` answers per prompt at temperature 1 (fixed seed; the quantity the
    RL objective raises, and less coarse than greedy on a tiny model). `prefix` names them otherwise when
    `records` are not held out (``Split.prefix``)."""
    from .generation import sample

    if not records:
        return {}
    out = {}
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    for name, do_sample, n in ((f"{prefix}reward_mean", False, 1), (f"{prefix}reward_sampled", True, samples)):
        rows = [r for r in records for _ in range(n)]
        texts = []
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            ro = sample(model, processor, [load_images(r["images"], image_cache) for r in chunk],
                        [r["prompt"] for r in chunk], do_sample=do_sample, max_new_tokens=max_new_tokens)
            texts.extend(ro.texts)
        rewards = reward_fn([r["prompt"] for r in rows], texts, images=[r["images"] for r in rows],
                            ground_truth=[r.get("ground_truth") for r in rows])
        out[name] = float(sum(rewards) / len(rewards))
        if not do_sample:
            out[f"{prefix}example"] = texts[0]
    torch.set_rng_state(rng_state)
    return out


def set_threads(n: int) -> None:
    if n:
        torch.set_num_threads(n)


def media_token_ids(model, processor) -> list[int]:
    """Ids of image / video placeholder tokens: a sampled answer must never contain one (the model would
    then expect image features that are not there: "Image features and image tokens do not match")."""
    ids = set()
    for obj in (processor, getattr(processor, "tokenizer", None), getattr(model, "config", None)):
        for name in ("image_token_id", "video_token_id", "image_token_index", "video_token_index"):
            value = getattr(obj, name, None) if obj is not None else None
            if isinstance(value, int) and value >= 0:
                ids.add(value)
    return sorted(ids)


def suppress_media_tokens(model, processor) -> list[int]:
    """Forbid media placeholder tokens in `model.generate` through its generation config."""
    ids = media_token_ids(model, processor)
    if ids:
        gc = model.generation_config
        gc.suppress_tokens = sorted(set(gc.suppress_tokens or []) | set(ids))
    return ids
