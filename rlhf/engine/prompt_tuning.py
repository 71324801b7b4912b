"""Prompt tuning (Lester et al. 2021) on a VLM: `num_virtual_tokens` trainable embeddings placed before every
input, the base model's weights all frozen.

PEFT 0.21 builds, saves and loads the adapter (`PromptTuningConfig`, task type CAUSAL_LM): its forward pass
embeds the input ids itself and prepends the virtual tokens, so the model sees them before the image tokens
and the text. Two things of PEFT's version do not fit the engine, and `attach` fixes both on the PeftModel:

1. **Positions.** PEFT returns logits (and hidden states) N positions longer than the input ids: the first N
   belong to the virtual tokens. Every loss and log-probability of the engine reads them at the input ids'
   positions (the SFT labels, the PPO/TRL token log-probs, the reward model's last token and answer
   log-probability), so a forward hook drops the first N positions whenever an output is exactly N longer
   than its input. With the adapter disabled (the PPO reference) PEFT runs the base model, the output is as
   long as the input and stays as it is.
2. **Generation with the KV cache.** transformers 5 hands the cache to `prepare_inputs_for_generation` as
   `cache`, where PEFT 0.21 looks for `past_key_values`: it takes every decoding step for the first, prepends
   the virtual tokens again to the one new token, and the cache fills with copies of them (the answers drift
   from the second token on). `_prepare_inputs_for_generation` injects the virtual tokens only while the
   cache is empty, extends the attention mask by N at every step and leaves the positions to the model (it
   counts them from the cache, which holds the virtual tokens; a position derived from the attention mask
   would not). tests/engine/test_peft_methods.py checks that greedy `generate` equals the argmax of the
   training forward pass token by token.
"""

from __future__ import annotations

import types

import torch

from .config_base import prompt_tuning_refusal

PROMPT_TUNING = "PROMPT_TUNING"  # PeftType's value, as adapter_config.json names it


def is_prompt_tuned(model) -> bool:
    """Whether `model` is a PeftModel whose active adapter is a prompt-tuning one."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return False
    config = configs.get(getattr(model, "active_adapter", "default"))
    return config is not None and str(getattr(config.peft_type, "value", config.peft_type)) == PROMPT_TUNING


def config(num_virtual_tokens: int):
    """The PEFT config. PEFT's own initialisations do not fit a VLM (N(0, 1) is far larger than a word
    embedding; its vocabulary sample can draw the image token, which the model then takes for an image
    position), so `init_from_vocabulary` replaces the random start asked for here."""
    from peft import PromptTuningConfig, PromptTuningInit

    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.RANDOM)


def init_from_vocabulary(model, tokenizer) -> None:
    """Start each virtual token as the embedding of an ordinary token drawn from the vocabulary (Lester et al.
    2021 found this trains better than random vectors): never a special or added token (BOS, padding, the
    image placeholder). Draws from torch's generator, which the engine seeds."""
    excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    words = model.word_embeddings
    ordinary = torch.tensor([i for i in range(min(len(tokenizer), words.num_embeddings)) if i not in excluded])
    embedding = model.prompt_encoder[model.active_adapter].embedding
    picks = ordinary[torch.randint(len(ordinary), (embedding.num_embeddings,))].to(words.weight.device)
    with torch.no_grad():
        embedding.weight.copy_(words(picks).to(embedding.weight.dtype))


def refusal(model) -> str | None:
    """Why prompt tuning cannot train `model` (a base model) and what to use instead; None where it can."""
    return prompt_tuning_refusal(getattr(getattr(model, "config", None), "model_type", None))


def attach(model) -> None:
    """Make a prompt-tuned PeftModel fit the engine (see the module docstring); a no-op for other models.
    The caller has checked `refusal` on its base model."""
    if not is_prompt_tuned(model) or getattr(model, "_lensloop_prompt_tuning", False):
        return
    model.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
    model.prepare_inputs_for_generation = types.MethodType(_prepare_inputs_for_generation, model)
    model._lensloop_prompt_tuning = True


def _virtual_tokens(model) -> int:
    return model.peft_config[model.active_adapter].num_virtual_tokens


def _drop_virtual_positions(model, args, kwargs, output):
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs.get("inputs_embeds")
    if inputs is None or not is_prompt_tuned(model):
        return output
    n, length = _virtual_tokens(model), inputs.shape[1]
    logits = getattr(output, "logits", None)
    if logits is not None and logits.shape[1] == length + n:
        output.logits = logits[:, n:]
    hidden = getattr(output, "hidden_states", None)
    if hidden is not None and hidden[0].shape[1] == length + n:
        output.hidden_states = tuple(h[:, n:] for h in hidden)
    return output


def _prepare_inputs_for_generation(self, *args, **kwargs):
    n = _virtual_tokens(self)
    inputs = self.base_model_prepare_inputs_for_generation(*args, **kwargs)
    cache = inputs.get("cache", inputs.get("past_key_values"))
    mask = inputs.get("attention_mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise ValueError("prompt tuning generates with a 2-D attention mask only (a dynamic KV cache); this "
                             f"model's generation passed {type(mask).__name__}")
        inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
    inputs.pop("position_ids", None)
    if cache is None or cache.get_seq_length() == 0:
        embeds = inputs.get("inputs_embeds")
        if embeds is None:
            embeds = self.word_embeddings(inputs["input_ids"])
        prompts = self.get_prompt(batch_size=embeds.shape[0]).to(embeds.dtype)
        inputs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        inputs["input_ids"] = None
    return inputs
