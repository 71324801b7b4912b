"""The PPO actor-critic: the policy VLM (a PEFT LoRA model) and a scalar value head on its backbone.

Design choice — the critic shares the policy's backbone: V(s_t) = w·h_t + b on the same final hidden
state h_t whose `lm_head` gives the policy's logits. One forward pass yields logits and values, and no
second backbone is kept in memory (with a 7B VLM a separate critic would be another 7B copy plus its
adapter and optimiser state). The price is that the value loss also moves the shared LoRA weights; a small
`vf_coef` (0.1) keeps it from dominating. The alternative, a critic initialised from the reward model
("N implementation details of RLHF", detail 2), needs its own backbone and a reward model, which the
verifiable-reward runs do not have.

The reference policy is the same module with the adapter disabled (`reference_logits`): no copy at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class PolicyAndValue(nn.Module):
    """policy (PEFT model) + Linear(hidden, 1) value head in float32, zero-initialised (V ≡ 0 at start)."""

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, inputs: dict[str, torch.Tensor], n_completion: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, values) at the positions that predict the last `n_completion` tokens of
        `inputs["input_ids"]`: logits (B, L, V) of π(· | s_t) and values (B, L) of V(s_t)."""
        out = self.policy(**inputs, output_hidden_states=True, logits_to_keep=n_completion + 1)
        logits = out.logits[:, :-1]  # position t predicts token t + 1
        hidden = out.hidden_states[-1][:, -(n_completion + 1):-1]  # (B, L, H) final normed state
        values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values


@torch.no_grad()
def reference_logits(policy, inputs: dict[str, torch.Tensor], n_completion: int) -> torch.Tensor:
    """(B, L, V) logits of the reference policy: the base weights, adapter disabled (no second copy)."""
    with policy.disable_adapter():
        out = policy(**inputs, logits_to_keep=n_completion + 1)
    return out.logits[:, :-1]


def save_value_head(head: nn.Linear, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / VALUE_HEAD_FILE))


def load_value_head(head: nn.Linear, folder: Path) -> None:
    from safetensors.torch import load_file

    head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
