"""Pure tensor helpers of PPO for language models: KL estimators, KL-shaped rewards, GAE, whitening and
the clipped losses. Only torch; each formula cites its source.

Shapes: B rollouts, L generated positions. `mask` (B, L) is 1 on the tokens of an answer (up to and
including its first EOS) and 0 on the padding after it; every helper ignores masked positions.
"""

from __future__ import annotations

import torch

from .ops import masked_mean, masked_whiten

__all__ = [
    "AdaptiveKLController",
    "RunningMoments",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "gae",
    "gae_loop",
    "kl_penalty",
    "kl_shaped_rewards",
    "last_token_index",
    "masked_mean",
    "masked_whiten",
]


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """(B, L) per-token estimate of KL(π ‖ π_ref) from samples a_t ~ π, with r = π_ref(a_t) / π(a_t).

    Schulman, "Approximating KL divergence" (2020): k1 = −log r = log π − log π_ref (unbiased, can be
    negative; what Ziegler et al. 2019 and "N implementation details of RLHF" put in the reward);
    k2 = ½ (log r)² (biased, low variance); k3 = (r − 1) − log r (unbiased, always ≥ 0).
    """
    log_ratio = logprobs - ref_logprobs  # log π − log π_ref = −log r
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (r − 1) − log r, expm1 for precision near 0
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last 1 in each row of a right-padded (B, L) mask (0 for an empty row)."""
    return (mask.sum(-1) - 1).clamp(min=0).long()


def kl_shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(B, L) per-token rewards r_t = −β·KL_t, plus the sequence score on the answer's last token.

    Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) − β log(π(y|x) / π_ref(y|x)), spread over tokens as in
    Stiennon et al. 2020 and "N implementation details of RLHF with PPO" (detail 4).
    """
    rewards = -kl_coef * kl * mask
    idx = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), idx] += scores
    return rewards


def gae_loop(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
             lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, L): generalised advantage estimation as a reversed loop.

    Schulman et al. 2016, eq. 16: δ_t = r_t + γ V(s_{t+1}) − V(s_t), A_t = δ_t + γλ A_{t+1}; the value
    after the last answer token is 0 (the episode ends). Returns R_t = A_t + V(s_t) are the value targets
    (CleanRL `ppo.py`). Masked positions get 0.
    """
    rewards, values = rewards * mask, values * mask
    B, L = rewards.shape
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(L)):
        next_values = values[:, t + 1] if t + 1 < L else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised GAE, equal to `gae_loop`: A_t = Σ_k (γλ)^k δ_{t+k}, as one triangular matmul.

    Fine for answer lengths of a few hundred tokens (an (L, L) matrix); the loop is the reference.
    """
    rewards, values = rewards * mask, values * mask
    L = rewards.shape[1]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values  # (B, L) TD errors δ_t
    t = torch.arange(L, device=rewards.device, dtype=rewards.dtype)
    k = t.unsqueeze(0) - t.unsqueeze(1)  # (L, L): k[t, s] = s − t
    discount = torch.where(k >= 0, (gamma * lam) ** k.clamp(min=0), torch.zeros_like(k))
    advantages = (deltas @ discount.T) * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise, per-token mean:

        ratio = exp(log π − log π_old)
        L = mean( max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε)) )

    Also returns clipfrac (share of tokens where the clipped term is active) and approxkl
    (½ mean (log ratio)², "N implementation details", detail on approx_kl).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    stats = {"clipfrac": masked_mean((pg_loss2 > pg_loss1).float(), mask),
             "approxkl": 0.5 * masked_mean(log_ratio**2, mask)}
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (OpenAI baselines `ppo2`; "N implementation details", detail 9):

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_V = ½ mean( max((V − R)², (V_clip − R)²) )

    Returns (loss, clipfrac of the value).
    """
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_loss1 = (values - returns) ** 2
    vf_loss2 = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask)
    return loss, masked_mean((vf_loss2 > vf_loss1).float(), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, L) entropy H(π(·|s_t)) = logsumexp(z) − Σ softmax(z)·z, from (B, L, V) logits."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


class AdaptiveKLController:
    """β adapted towards a target KL (Ziegler et al. 2019, §2.2): e = clip(KL/target − 1, ±0.2),
    β ← β (1 + e · n / horizon), with n the rollouts of the last iteration. `target=None` keeps β fixed."""

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class RunningMoments:
    """Running mean and standard deviation of every score seen so far (Chan et al. 1979 parallel update;
    TRL's old `PPOTrainer` `RunningMoments`, used by its `use_score_scaling` / `use_score_norm`).

    PPO normalises each new batch of sequence scores with the moments of all batches so far, this one
    included: s ← (s − mean) / std. Centred scores suit a value head that starts at V ≡ 0, and the unit
    scale makes `kl_coef` and the learning rate independent of the reward's units."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-24):
        self.mean, self.var, self.count = mean, var, count

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.detach().double().flatten()
        n = xs.numel()
        batch_mean, batch_var = xs.mean().item(), xs.var(unbiased=False).item()
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def normalise(self, xs: torch.Tensor) -> torch.Tensor:
        return (xs - self.mean) / max(self.std, 1e-6)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}
