"""Small pure tensor helpers shared by the reward model, generation and (later) PPO/GRPO.

Only torch. Shapes in comments: B batch, T sequence length, V vocabulary.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1 (all positions if dim is None)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` over positions where `mask` is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise `values` to unit variance (and zero mean if `shift_mean`) over the masked positions."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def last_non_pad_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last position whose attention mask is 1, for left or right padding.

    The last 1 in each row is at `T - 1 - argmax(flip(mask))`; this holds for any padding side, unlike
    `mask.sum(-1) - 1`, which is only right for right padding.
    """
    T = attention_mask.shape[-1]
    return T - 1 - attention_mask.flip(-1).to(torch.long).argmax(-1)


def first_true_indices(bools: torch.Tensor, dtype=torch.long) -> torch.Tensor:
    """(B,) index of the first True in each row of a (B, T) bool tensor; T when a row has none."""
    T = bools.size(-1)
    idx = T * (~bools).to(dtype) + torch.arange(T, dtype=dtype, device=bools.device)
    return idx.min(-1).values


def gather_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) log π(tokens[b, t]) from (B, T, V) logits at the same positions (already shifted)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def completion_mask_after_eos(tokens: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """(B, T) mask of generated tokens up to and including the first EOS (1 = part of the answer)."""
    if eos_token_id is None:
        return torch.ones_like(tokens, dtype=torch.long)
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id],
                              device=tokens.device)
    is_eos = torch.isin(tokens, eos_ids)
    first = first_true_indices(is_eos)
    positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    return (positions <= first.unsqueeze(1)).to(torch.long)
