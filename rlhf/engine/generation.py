"""Sampling from a VLM policy: batched across images, temperature / top-p, per-token log-probabilities,
and K *distinct* candidates per prompt (duplicates and empty answers replaced by fresh samples) so that
annotators never rank two identical answers.

`sample` is the reusable core (PPO/GRPO rollouts call it); `generate_candidates` and `write_samples`
serve the `generate` subcommand and the Samples JSONL of DESIGN.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import encode_prompts, load_images, write_jsonl
from .ops import completion_mask_after_eos, gather_token_logprobs

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One batch of sampled answers. Shapes: B rows, L generated positions."""

    prompt_inputs: dict[str, torch.Tensor]  # the left-padded prompt batch fed to generate
    completion_ids: torch.Tensor  # (B, L) generated token ids (pad after EOS)
    completion_mask: torch.Tensor  # (B, L) 1 up to and including the first EOS
    token_logprobs: torch.Tensor  # (B, L) log π(a_t | s_t) at temperature 1, 0 where masked
    texts: list[str]  # decoded answers, special tokens skipped

    @property
    def logprobs(self) -> torch.Tensor:
        """(B,) sequence log-probability: the sum of the masked token log-probabilities."""
        return self.token_logprobs.sum(-1)


@torch.no_grad()
def sample(model, processor, images: list[list], prompts: list[str], *, do_sample: bool = True,
           temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 32) -> Rollout:
    """Generate one answer per (images, prompt) row.

    Log-probabilities are those of the unmodified policy (raw logits: temperature 1, no top-p), which is
    what the RL objectives need, whatever the sampling temperature was.
    """
    inputs = encode_prompts(processor, [load_images(ims) for ims in images], prompts)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    tok = processor.tokenizer
    gen_kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "return_dict_in_generate": True,
                  "output_logits": True, "pad_token_id": tok.pad_token_id}
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    out = model.generate(**inputs, **gen_kwargs)
    model.train(was_training)
    P = inputs["input_ids"].shape[1]
    completion = out.sequences[:, P:]
    logits = torch.stack(out.logits, dim=1)  # (B, L, V) raw logits
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tok.eos_token_id
    mask = completion_mask_after_eos(completion, eos)
    token_logprobs = gather_token_logprobs(logits, completion) * mask
    texts = [t.strip() for t in tok.batch_decode(completion * mask + tok.pad_token_id * (1 - mask),
                                                 skip_special_tokens=True)]
    return Rollout(inputs, completion, mask, token_logprobs, texts)


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


def generate_candidates(
    model, processor, records: list[dict], *, k: int = 4, temperature: float = 1.0, top_p: float = 1.0,
    max_new_tokens: int = 32, batch_size: int = 8, max_resample_rounds: int = 8,
    resample_temperature_step: float = 0.25, seed: int = 0,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[list[dict]]:
    """K distinct candidates per record (`images`, `prompt`): a list per record of
    `{"text", "logprob", "num_tokens"}`.

    Duplicates (case- and whitespace-insensitive) and empty answers are replaced by fresh samples, each
    resampling round a little hotter. A record that still lacks K distinct answers after
    `max_resample_rounds` keeps fewer, with a warning (a model that can only say two things).
    """
    torch.manual_seed(seed)
    accepted: list[list[dict]] = [[] for _ in records]
    seen: list[set[str]] = [set() for _ in records]
    for rnd in range(max_resample_rounds + 1):
        todo = [(i, k - len(accepted[i])) for i in range(len(records)) if len(accepted[i]) < k]
        if not todo:
            break
        temp = temperature + rnd * resample_temperature_step
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows = [i for i, need in chunk for _ in range(need)]
            ro = sample(model, processor, [records[i]["images"] for i in rows], [records[i]["prompt"] for i in rows],
                        temperature=temp, top_p=top_p, max_new_tokens=max_new_tokens)
            for j, i in enumerate(rows):
                text, key = ro.texts[j], _key(ro.texts[j])
                if not key or key in seen[i] or len(accepted[i]) >= k:
                    continue
                seen[i].add(key)
                accepted[i].append({"text": text, "logprob": float(ro.logprobs[j]),
                                    "num_tokens": int(ro.completion_mask[j].sum())})
            if on_batch is not None and rnd == 0:
                on_batch(min(start + batch_size, len(todo)), len(todo))
    short = sum(len(a) < k for a in accepted)
    if short:
        log.warning("%d of %d prompts have fewer than %d distinct candidates after %d resampling rounds",
                    short, len(records), k, max_resample_rounds)
    return accepted


def answers(model, processor, records: list[dict], *, do_sample: bool, max_new_tokens: int = 32,
            batch_size: int = 16) -> list[str]:
    """One answer per record, `batch_size` records per generate call: greedy, or sampled at T = 1."""
    out = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        ro = sample(model, processor, [r["images"] for r in chunk], [r["prompt"] for r in chunk],
                    do_sample=do_sample, max_new_tokens=max_new_tokens)
        out.extend(ro.texts)
    return out


def greedy_answers(model, processor, records: list[dict], *, max_new_tokens: int = 32,
                   batch_size: int = 16) -> list[str]:
    """One greedy answer per record (evaluation)."""
    return answers(model, processor, records, do_sample=False, max_new_tokens=max_new_tokens, batch_size=batch_size)


def write_samples(path, records: list[dict], candidates: list[list[dict]], model_version: str) -> int:
    """Write the Samples JSONL of DESIGN.md: `{"prompt_id", "text", "model_version", "logprob"}` per
    candidate (+ `"reward"` when the candidate has one). Returns the number of lines written."""
    rows = [{"prompt_id": r["prompt_id"], "text": c["text"], "model_version": model_version,
             "logprob": c["logprob"], **({"reward": c["reward"]} if "reward" in c else {})}
            for r, cands in zip(records, candidates, strict=True) for c in cands]
    write_jsonl(path, rows)
    return len(rows)
