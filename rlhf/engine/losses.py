"""Losses of the training engine, each a small function citing its source. Only torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss, mean over the batch.

    Bradley & Terry (1952) model P(chosen ≻ rejected) = σ(r_c − r_r); the negative log-likelihood is
    −log σ(r_c − r_r − m) (Ouyang et al. 2022, eq. 1; the margin m of Touvron et al. 2023, Llama 2
    eq. 2, asks a larger gap for pairs far apart in the ranking). Shapes: (B,) each.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def soft_bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    confidence: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley–Terry with a soft label, mean over the batch:
    −[c·log σ(r_c − r_r − m) + (1 − c)·log σ(r_r − r_c − m)].

    ``confidence`` c ∈ [0, 1] is the probability that chosen truly is the better one (the reliability model's
    posterior, Chen et al. 2013 Crowd-BT; the export's ``confidence``): the cross-entropy of the BT probability
    against that soft target. c = 1 is `bradley_terry_loss`; c = 0 is that loss with the pair reversed; c = 0.5 only pulls the two
    rewards together. The margin m asks the gap in the direction each term asserts. Shapes: (B,) each.
    """
    diff = chosen_rewards - rejected_rewards
    m = margin if margin is not None else torch.zeros_like(diff)
    c = confidence.to(diff.dtype)
    return -(c * F.logsigmoid(diff - m) + (1 - c) * F.logsigmoid(-diff - m)).mean()


def reward_centering_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Auxiliary (r_c + r_r)^2 penalty that keeps rewards near zero (Eisenstein et al. 2023, "Helping or
    Herding?", §3); Bradley–Terry alone is invariant to a shift of all rewards."""
    return ((chosen_rewards + rejected_rewards) ** 2).mean()


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy on the positions whose label is not `ignore_index`.

    logits (B, T, V) at positions 0..T-1 predict labels at 1..T; labels (B, T) hold -100 on the prompt.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=ignore_index)
