"""AdaLoRA (Zhang et al. 2023) in the engine's training loops.

AdaLoRA is LoRA in SVD form (P Λ Q) whose rank budget moves during training to the matrices that matter:
after every optimizer step, before the gradients are cleared, ``update_and_allocate`` scores each singular
value by its sensitivity (|weight × gradient|, smoothed) and masks the least important ones until the
average rank falls from ``init_r`` to ``target_r``; an orthogonality penalty keeps P and Q orthogonal. PEFT
does neither by itself: the training loop must. ``Schedule`` does it for the engine's own loops (SFT, reward
model, PPO), ``callback`` for TRL's (GRPO, RLOO, DPO: after the optimizer step, before ``zero_grad``).

The schedule follows the run: ``total_step`` is the run's optimizer steps, the first tenth trains at the
initial rank (``tinit``), the budget shrinks until the last fifth (``tfinal``), which trains at the final
ranks. A run that continues a saved adapter starts from the ranks it kept, at the target already, and
trains them all without pruning. For any other PEFT method both are no-ops.
"""

from __future__ import annotations

import torch


def adalora_model(model: torch.nn.Module | None):
    """The ``AdaLoraModel`` inside ``model`` (a PEFT model, a reward model or a value-head wrapper), or None."""
    if model is None:
        return None
    from peft.tuners.adalora import AdaLoraModel

    return next((m for m in model.modules() if isinstance(m, AdaLoraModel)), None)


class Schedule:
    """Call ``step()`` after each optimizer step, before ``zero_grad``; add ``penalty()`` to the loss."""

    def __init__(self, model: torch.nn.Module, total_steps: int):
        self.inner = adalora_model(model)
        self.done = 0
        self.allocate = False
        if self.inner is not None:
            name = self.inner.trainable_adapter_name
            config = self.inner.peft_config[name]
            total = max(1, int(total_steps))
            config.tinit, config.tfinal = total // 10, total // 5
            allocator = self.inner.rankallocator
            allocator.set_total_step(total)
            # The starting budget is the ranks the adapter has now. PEFT counts it when the model is built, at
            # init_r per matrix, before loading a saved adapter resizes each matrix to the ranks it kept: a run
            # that continues an adapter (a later round's policy) would prune the kept ranks again (to half of
            # them at the end of the second run). An adapter already at its target budget keeps every rank.
            allocator.init_bgt = sum(m.lora_E[name].shape[0] for m in self.inner.model.modules()
                                     if hasattr(m, "lora_E") and name in m.lora_E)
            self.allocate = allocator.init_bgt > allocator.target_bgt

    def __bool__(self) -> bool:
        return self.inner is not None

    def step(self) -> None:
        if self.allocate:
            self.inner.update_and_allocate(self.done)
        self.done += 1

    def penalty(self) -> torch.Tensor | float:
        """The orthogonality penalty of P and Q, weighted by the config's ``orth_reg_weight`` (what PEFT adds
        only to a loss that the model computes from ``labels``; the engine's losses are its own)."""
        if self.inner is None:
            return 0.0
        name = self.inner.trainable_adapter_name
        weight = self.inner.peft_config[name].orth_reg_weight
        terms = []
        for n, p in self.inner.model.named_parameters():
            if ("lora_A" in n or "lora_B" in n) and name in n and p.requires_grad:
                cov = p @ p.T if "lora_A" in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
        return weight * torch.stack(terms).mean() if terms else 0.0


def callback():
    """A ``transformers.TrainerCallback`` that runs the AdaLoRA schedule in a TRL trainer (a no-op for other
    PEFT methods)."""
    from transformers import TrainerCallback

    class AdaLoraCallback(TrainerCallback):
        schedule: Schedule | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.schedule = Schedule(model, state.max_steps)

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.schedule:
                self.schedule.step()

    return AdaLoraCallback()
