"""What PPO, GRPO and RLOO share: the reward (a weighted sum of terms: reward model, rule rewards, user functions), the
train / held-out split of a prompt set (the held-out rule of `heldout.py`), and the held-out evaluation
(greedy answers, mean reward)."""

from __future__ import annotations

import json
import logging

import torch

from .data import load_images, read_prompts
from .heldout import Split, split_lines, warn_not_heldout
from .reward_terms import REWARD_MODEL, Term, check_values, load_term, uses_reward_model

log = logging.getLogger(__name__)


class ComposedReward:
    """The policy's reward, Σ weight · term over the terms of the config (`reward_terms.py`: the reward
    model, built-in and verifiable rewards, user functions), as a TRL reward function
    `(prompts, completions, images=None, **columns) -> list[float]`.

    `ground_truth` may arrive as dicts or as JSON strings (how the TRL datasets carry it). After each call
    `last` holds every term's mean (unweighted), `rewards/<term>/mean`, the names TRL logs its reward
    functions under, so PPO's metrics and GRPO's read the same on the run page."""

    __name__ = "reward"

    def __init__(self, terms: list[Term], scorer=None):
        if not terms:
            raise ValueError("ComposedReward needs at least one term")
        self.terms, self.fns = terms, []
        for i, term in enumerate(terms):
            if term.reward == REWARD_MODEL:
                if scorer is None:
                    raise ValueError(f"reward[{i}] is the reward model, but none is loaded (reward_model_path)")
                self.fns.append(scorer)
            else:
                self.fns.append(load_term(term, f"reward[{i}]"))
        self.last: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg, device: str = "auto") -> ComposedReward:
        terms = cfg.reward_terms()
        scorer = None
        if uses_reward_model(terms):
            from .reward_model import RewardScorer

            scorer = RewardScorer.from_checkpoint(cfg.reward_model_path, device=device)
        return cls(terms, scorer)

    def term_values(self, prompts, completions, images=None, **kwargs) -> dict[str, list[float]]:
        """Each term's value per completion (unweighted), by term label."""
        kwargs = _decoded(kwargs)
        return {term.label: check_values(fn(prompts, completions, images=images, **kwargs), len(completions),
                                         f"reward term {term.label}")
                for term, fn in zip(self.terms, self.fns, strict=True)}

    def __call__(self, prompts, completions, images=None, **kwargs) -> list[float]:
        values = self.term_values(prompts, completions, images=images, **kwargs)
        total = [0.0] * len(completions)
        for term in self.terms:
            total = [t + term.weight * v for t, v in zip(total, values[term.label], strict=True)]
        self.last = {f"rewards/{label}/mean": sum(v) / len(v) for label, v in values.items() if v}
        return total

    def trl_functions(self) -> tuple[list, list[float]]:
        """The terms as separate TRL reward functions with their weights (GRPOTrainer's `reward_funcs` and
        `reward_weights`): TRL then logs each one's mean as rewards/<term>/mean."""
        funcs = []
        for term, fn in zip(self.terms, self.fns, strict=True):
            def one(prompts, completions, _fn=fn, _label=term.label, **kwargs):
                return check_values(_fn(prompts, completions, **_decoded(kwargs)), len(completions),
                                    f"reward term {_label}")

            one.__name__ = term.label
            funcs.append(one)
        return funcs, [term.weight for term in self.terms]


def _decoded(columns: dict) -> dict:
    """The reward columns with `ground_truth` as dicts (TRL's datasets carry it as JSON strings)."""
    if columns.get("ground_truth") is None:
        return columns
    return {**columns, "ground_truth": [json.loads(g) if isinstance(g, str) else g for g in columns["ground_truth"]]}


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
