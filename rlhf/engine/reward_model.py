"""The multimodal reward model: the VLM backbone with a scalar head on the last non-pad token.

TRL's RewardTrainer is text-only and AutoModelForSequenceClassification has no VLM classes, so this is
ours: r(x, y) = w·h_T + b, with h_T the final (normed) language-model hidden state at the last non-pad
token of prompt + answer (Ouyang et al. 2022, §3.5; Stiennon et al. 2020). Optionally (the default for
new models, `RewardConfig.likelihood_term`) plus α·log p(y | image, x), the answer's log-likelihood under
the backbone's own LM head, with α a learnt scalar starting at 0: the untrained reward stays at chance,
but the head can lean on what the captioner already knows, word by word, instead of squeezing the
whole comparison of answer and image into one token (a generative-verifier prior; Zhang et al. 2024,
"Generative Verifiers"). Save/load keeps the adapter (or the full backbone), the head and α;
`RewardScorer` is a batched TRL reward function.

With `token_head` (`RewardConfig.token_head`: "mean" or "sum") the reward also pools a second linear head over
the answer's own tokens, r += mean_t u·h_t (or Σ_t), a per-token score that starts at 0: an error in a caption is one wrong word (a colour,
a shape, an object too many or too few), which the state at that word sees directly, where the last token's
state must gather every word's verdict through attention (dense token-level rewards; Wu et al. 2023,
"Fine-Grained Human Feedback Gives Better Rewards for Language Model Training", and process reward models,
Lightman et al. 2023).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .data import encode_completions, load_images
from .loading import load_model, resolve_model_path
from .ops import last_non_pad_index
from .rewards import as_text

META = "reward_model.json"
HEAD = "reward_head.pt"


class RewardModel(nn.Module):
    """backbone (a VLM, possibly PEFT-wrapped) + Linear(hidden, 1) head in float32, with `likelihood_term` a
    learnt weight α (float32, init 0) on the answer's log-likelihood, and with `token_head` ("mean" or "sum") a
    Linear(hidden, 1) (init 0) pooled over the answer tokens."""

    def __init__(self, backbone: nn.Module, hidden_size: int, likelihood_term: bool = False,
                 token_head: str = ""):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        # Small init so initial rewards are ~0 ("N implementation details of RLHF", reward head init).
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.head.bias)
        # Only a parameter when used: DDP without find_unused_parameters fails on unused parameters.
        self.likelihood_weight = nn.Parameter(torch.zeros(())) if likelihood_term else None
        if token_head is True:  # checkpoints written before the pooling could be chosen summed
            token_head = "sum"
        if token_head not in ("", None, False, "mean", "sum"):
            raise ValueError(f"token_head={token_head!r}: use '', 'mean' or 'sum'")
        self.token_pooling = token_head or ""
        self.token_head = nn.Linear(hidden_size, 1) if token_head else None
        if self.token_head is not None:  # starts at 0: the untrained reward is the last-token head's alone
            nn.init.zeros_(self.token_head.weight)
            nn.init.zeros_(self.token_head.bias)

    def to_head_device(self) -> None:
        """Put the head (and α) on the backbone's device."""
        self.head.to(self.backbone.device)
        if self.token_head is not None:
            self.token_head.to(self.backbone.device)
        if self.likelihood_weight is not None:
            self.likelihood_weight.data = self.likelihood_weight.data.to(self.backbone.device)

    @property
    def likelihood_term(self) -> bool:
        return self.likelihood_weight is not None

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters that are not the backbone's (trained with `RewardConfig.head_lr`)."""
        return [*self.head.parameters(), *([self.likelihood_weight] if self.likelihood_term else []),
                *(self.token_head.parameters() if self.token_head is not None else [])]

    def forward(self, completion_mask: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """(B,) rewards for a left- or right-padded batch of prompt + answer. `completion_mask` (B, T) marks
        the answer tokens (`encode_completions` gives it); the likelihood term needs it."""
        try:
            out = self.backbone(**inputs, output_hidden_states=True, logits_to_keep=1)
        except TypeError:  # a model whose forward has no logits_to_keep
            out = self.backbone(**inputs, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (B, T, H) final normed LM state
        idx = last_non_pad_index(inputs["attention_mask"])  # (B,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)
        reward = self.head(last.float()).squeeze(-1)
        if (self.likelihood_term or self.token_head is not None) and completion_mask is None:
            raise ValueError("this reward model reads the answer's own tokens and needs `completion_mask` "
                             "(from encode_completions); call score() or pass it")
        if self.token_head is not None:
            per_token = self.token_head(hidden.float()).squeeze(-1)  # (B, T)
            mask = completion_mask.to(per_token.dtype)
            pooled = (per_token * mask).sum(-1)
            if self.token_pooling == "mean":  # a longer answer earns nothing by its length alone
                pooled = pooled / mask.sum(-1).clamp(min=1)
            reward = reward + pooled
        if self.likelihood_term:
            reward = reward + self.likelihood_weight * answer_logprob(self.backbone, hidden, inputs["input_ids"],
                                                                      completion_mask)
        return reward


def answer_logprob(backbone: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                   completion_mask: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probability of the completion tokens under the backbone's LM head, from the final
    hidden states (only the completion positions go through the head). Any padding side."""
    targets = completion_mask[:, 1:].bool()  # token t+1 is an answer token ...
    states = hidden[:, :-1][targets]  # ... predicted from the state at t
    logits = backbone.get_output_embeddings()(states).float()
    tok = input_ids[:, 1:][targets]
    lp = torch.log_softmax(logits, -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    rows = targets.nonzero()[:, 0]
    return torch.zeros(input_ids.shape[0], device=lp.device, dtype=lp.dtype).index_add(0, rows, lp)


def text_hidden_size(model) -> int:
    config = model.config
    return config.get_text_config().hidden_size


def init_reward_model(model_cfg: ModelConfig, seed: int = 0, device: str | None = None,
                      likelihood_term: bool = False, token_head: str = ""):
    """A fresh reward model (trainable adapter or backbone, new head) and its processor."""
    if device is not None:
        model_cfg = dataclasses.replace(model_cfg, device=device)
    backbone, processor = load_model(model_cfg, trainable=True)
    torch.manual_seed(seed)
    out_emb = backbone.get_output_embeddings()
    # The LM head is not trained (it only reads the answer's likelihood, if at all) unless the adapter wraps it
    # (`lora_modules_to_save` names it, or the adapter at `adapter_path` saved it): then its copy trains too.
    if out_emb is not None:
        if not hasattr(out_emb, "modules_to_save"):
            out_emb.requires_grad_(False)
        elif not likelihood_term:  # it would train without a gradient (and DDP refuses unused parameters)
            raise ValueError("the adapter trains the LM head (model.lora_modules_to_save, or the adapter at "
                             "model.adapter_path), which only the likelihood term reads: set likelihood_term: true, "
                             "or leave the LM head out")
    elif likelihood_term:
        raise ValueError("likelihood_term needs a backbone with an LM head (get_output_embeddings() is None); "
                         "set likelihood_term: false")
    rm = RewardModel(backbone, text_hidden_size(backbone), likelihood_term, token_head)
    rm.to_head_device()
    return rm, processor


def save_reward_model(rm: RewardModel, processor, model_cfg: ModelConfig, path: str | Path) -> None:
    """Write adapter (LoRA) or full backbone, the head and a JSON meta file into `path`."""
    path = Path(path)
    backbone = rm.backbone
    is_peft = hasattr(backbone, "peft_config")
    if is_peft:
        backbone.save_pretrained(path / "adapter")
    else:
        backbone.save_pretrained(path / "backbone")
    processor.save_pretrained(path / ("backbone" if not is_peft else "processor"))
    head = {k: v.detach().cpu() for k, v in rm.head.state_dict().items()}
    if rm.likelihood_term:
        head["likelihood_weight"] = rm.likelihood_weight.detach().cpu()
    if rm.token_head is not None:
        head.update({f"token_head.{k}": v.detach().cpu() for k, v in rm.token_head.state_dict().items()})
    torch.save(head, path / HEAD)
    base = resolve_model_path(model_cfg.path) if is_peft else "backbone"
    if is_peft and Path(base).exists():
        base = str(Path(base).resolve())
    meta = {"format": 1, "base_model": base, "adapter": "adapter" if is_peft else None,
            "hidden_size": rm.head.in_features, "likelihood_term": rm.likelihood_term,
            "token_head": rm.token_pooling,
            "model": dataclasses.asdict(model_cfg)}
    (path / META).write_text(json.dumps(meta, indent=2))


def load_reward_model(path: str | Path, *, device: str = "auto", trainable: bool = False):
    """(RewardModel, processor) from a folder written by `save_reward_model`."""
    path = Path(path)
    if not (path / META).is_file():
        raise FileNotFoundError(f"{path} is not a reward-model checkpoint (no {META}); give the checkpoint/ "
                                "folder of a train-reward run")
    meta = json.loads((path / META).read_text())
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in meta["model"].items() if k in fields})
    if meta["adapter"]:
        cfg = dataclasses.replace(cfg, path=meta["base_model"], adapter_path=str(path / meta["adapter"]),
                                  device=device)
    else:
        cfg = dataclasses.replace(cfg, path=str(path / "backbone"), adapter_path=None, lora=False, device=device)
    backbone, processor = load_model(cfg, trainable=trainable)
    rm = RewardModel(backbone, meta["hidden_size"], meta.get("likelihood_term", False), meta.get("token_head", ""))
    head = torch.load(path / HEAD, map_location="cpu")
    if rm.likelihood_term:
        rm.likelihood_weight.data.copy_(head.pop("likelihood_weight"))
    if rm.token_head is not None:
        rm.token_head.load_state_dict({k[len("token_head."):]: head.pop(k) for k in list(head)
                                       if k.startswith("token_head.")})
    rm.head.load_state_dict(head)
    rm.to_head_device()
    rm.train(trainable)
    return rm, processor


def score(rm: RewardModel, processor, images: list[list], prompts: list[str], completions: list[str],
          batch_size: int = 32, image_cache: dict | None = None) -> torch.Tensor:
    """(N,) rewards of completions (no grad), in batches."""
    out = []
    device = next(rm.head.parameters()).device
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            ims = [load_images(i, image_cache) for i in images[s:s + batch_size]]
            batch = encode_completions(processor, ims, prompts[s:s + batch_size],
                                       completions[s:s + batch_size]).to(device)
            out.append(rm(completion_mask=batch.completion_mask, **batch.inputs).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _image_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [x]


class RewardScorer:
    """A TRL reward function backed by a reward model: `(prompts, completions, images, **kwargs) ->
    list[float]`, batched. Prompts and completions may be strings or conversational messages; `images`
    holds per completion a PIL image, a path, or a list of those (TRL passes the dataset's `images`).

    Not an nn.Module on purpose: TRL treats module reward functions as sequence classifiers.
    """

    __name__ = "reward_model"

    def __init__(self, rm: RewardModel, processor, batch_size: int = 32):
        self.rm, self.processor, self.batch_size = rm, processor, batch_size
        self.rm.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", batch_size: int = 32) -> RewardScorer:
        rm, processor = load_reward_model(path, device=device)
        return cls(rm, processor, batch_size)

    def __call__(self, prompts, completions, images=None, **kwargs) -> list[float]:
        if images is None:
            images = kwargs.get("image")
        if images is None:
            raise ValueError("the reward model needs the images: pass `images` (one entry per completion)")
        ims = [_image_list(i) for i in images]
        scores = score(self.rm, self.processor, ims, [_prompt_text(p) for p in prompts],
                       [as_text(c) for c in completions], self.batch_size)
        return scores.tolist()


def _prompt_text(p) -> str:
    """The user's text of a prompt: a string, or the text of the last user message of a conversation."""
    if isinstance(p, list):
        users = [m for m in p if isinstance(m, dict) and m.get("role") == "user"]
        return as_text(users[-1:] or p)
    return as_text(p)
