"""PPO for a vision-language policy with LoRA, readable top to bottom (TRL 1.x has no PPO trainer).

Actor-critic = the policy VLM with a LoRA adapter + a value head on its final hidden state (see
value_head.py for why the critic shares the backbone). Reference policy = the same weights with the
adapter disabled. Each iteration (the numbered steps of "The N implementation details of RLHF with PPO",
Huang et al. 2024, and CleanRL `ppo.py`):

    1 generate answers with sampling                      (old log-probs and values: one forward pass)
    2 score them (the composed reward: reward model, rule rewards, user functions); penalise answers with no EOS token
    3 normalise the scores with their running mean and std
    4 per-token KL to the reference, k1 = log π − log π_ref by default, β fixed or adaptive
    5 GAE advantages and returns
    6 `ppo_epochs` × minibatches: clipped policy loss + vf_coef × clipped value loss, gradient
      accumulation over micro-batches, gradient clipping

The learner's state (actor-critic, optimiser, reward, β, score moments, batch sizes) is one `PPOState`
built by `setup`; `rollout` (steps 1–5) and `optimise` (step 6) take it and the iteration's batch.

Runs under `accelerate launch` (DDP; every process rolls out `batch_size / processes` answers). The
checkpoint (adapter, value head, optimizer, iteration, β) is written atomically through RunDir, and
`resume_from` continues the same run: per-iteration seeds make a resumed run sample what an unbroken
one would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from .adalora import Schedule
from .config import to_dict
from .data import answer_token_type, load_images
from .ops import gather_token_logprobs
from .rl_common import ComposedReward, evaluate_reward, set_threads, split_prompts, suppress_media_tokens
from .rl_config import PPOConfig, check_ppo_batches
from .rl_ops import (
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_penalty,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
)
from .rundir import RunDir
from .value_head import PolicyAndValue, load_value_head, reference_logits, save_value_head

log = logging.getLogger(__name__)

STATE_FILE = "ppo_state.json"
OPTIMIZER_FILE = "optimizer.pt"


# ---- batches -------------------------------------------------------------------------------------------


def join_prompt_and_answer(prompt_inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor,
                           answer_mask: torch.Tensor, processor=None) -> dict[str, torch.Tensor]:
    """Model inputs of prompt (left-padded, as generated) + answer (right-padded after its EOS).

    The padded prompt tensors are kept exactly as `generate` saw them, so the forward pass reproduces the
    sampling distribution (re-padding would shift positions on models that count padding). Other per-token
    tensors of the prompt (Qwen2-VL's ``mm_token_type_ids``, Gemma 3's and PaliGemma's ``token_type_ids``)
    are continued over the answer with the value its tokens take (``data.answer_token_type``)."""
    ids = prompt_inputs["input_ids"]
    inputs = dict(prompt_inputs)
    inputs["input_ids"] = torch.cat([ids, answer_ids], dim=1)
    inputs["attention_mask"] = torch.cat([prompt_inputs["attention_mask"], answer_mask.to(
        prompt_inputs["attention_mask"].dtype)], dim=1)
    for key, value in prompt_inputs.items():
        if key not in ("input_ids", "attention_mask") and torch.is_tensor(value) and value.shape == ids.shape:
            fill = answer_token_type(processor, key) if processor is not None else 0
            inputs[key] = torch.cat([value, torch.full_like(answer_ids, fill, dtype=value.dtype)], dim=1)
    return inputs


def select_rows(inputs: dict[str, torch.Tensor], rows: torch.Tensor, images_per_row: list[int]) -> dict:
    """The sub-batch `rows` of a model batch: text tensors by row, image tensors (first dim = number of
    images, LLaVA-style `pixel_values`) by the images of those rows, and Qwen2-VL's flattened patches
    (`pixel_values` of shape (patches, dim)) by the patches of those images, from `image_grid_thw`."""
    B = inputs["input_ids"].shape[0]
    n_images = sum(images_per_row)
    starts = [sum(images_per_row[:i]) for i in range(B)]
    images = [starts[r] + j for r in rows.tolist() for j in range(images_per_row[r])]
    image_idx = torch.tensor(images, dtype=torch.long)
    grid = inputs.get("image_grid_thw")
    n_patches, patch_idx = -1, None
    if torch.is_tensor(grid) and grid.shape[0] == n_images:
        patches = grid.prod(-1).tolist()
        n_patches = sum(patches)
        first = [sum(patches[:i]) for i in range(n_images)]
        patch_idx = torch.tensor([p for i in images for p in range(first[i], first[i] + patches[i])], dtype=torch.long)
    out = {}
    for k, v in inputs.items():
        if not torch.is_tensor(v) or v.dim() == 0:
            out[k] = v
        elif v.shape[0] == B:
            out[k] = v[rows.to(v.device)]
        elif v.shape[0] == n_images:
            out[k] = v[image_idx.to(v.device)]
        elif patch_idx is not None and v.shape[0] == n_patches:
            out[k] = v[patch_idx.to(v.device)]
        else:
            raise ValueError(f"cannot split model input {k!r} of shape {tuple(v.shape)} by rows; this processor's "
                             "image layout is not supported by PPO minibatching")
    return out


@dataclasses.dataclass
class RolloutBatch:
    """Everything step 6 needs, per process. Shapes: B rollouts, L answer positions."""

    inputs: dict[str, torch.Tensor]  # prompt + answer model inputs
    images_per_row: list[int]
    answer_ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L) 1 up to and including the first EOS
    logprobs: torch.Tensor  # (B, L) log π_old(a_t | s_t)
    values: torch.Tensor  # (B, L) V_old(s_t)
    advantages: torch.Tensor  # (B, L) whitened GAE advantages
    returns: torch.Tensor  # (B, L) value targets


# ---- the learner's state -----------------------------------------------------------------------------


@dataclasses.dataclass
class PPOState:
    """What the PPO steps share, built once by `setup`: the actor-critic, its optimiser, the reward, the KL
    controller and score moments, and the batch sizes. `rollout` (steps 1–5) and `optimise` (step 6) read it;
    the controller and the moments are updated in place."""

    cfg: PPOConfig
    acc: Any  # accelerate.Accelerator
    ac: PolicyAndValue  # policy (base + LoRA) + value head; π_ref is the same policy with its adapter disabled
    ac_ddp: torch.nn.Module  # `ac` as Accelerate prepared it (DDP under several processes): the training forward
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]  # the trainable ones (gradient clipping)
    processor: Any
    reward_fn: ComposedReward
    kl_ctl: AdaptiveKLController  # β, fixed or adaptive
    score_moments: RunningMoments  # running mean and std of every score so far (step 3)
    eos_ids: torch.Tensor
    local_batch: int  # rollouts per process and iteration
    mini_batch: int
    micro_batch: int
    adalora: Schedule  # AdaLoRA's rank budget, stepped with the optimiser (a no-op for other methods)
    image_cache: dict = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.acc.device


def setup(cfg: PPOConfig, acc, resume: Path | None) -> tuple[PPOState, int]:
    """The learner's state, and the iteration it starts after (0, or the resumed checkpoint's)."""
    from .loading import load_model
    from .reward_model import text_hidden_size

    local_batch, mini_batch, micro_batch = check_ppo_batches(cfg, acc.num_processes)
    device = acc.device
    reward_fn = ComposedReward.from_config(cfg, device=str(device))

    # Actor-critic: base + LoRA (continuing model.adapter_path, or the resumed checkpoint's adapter).
    model_cfg = dataclasses.replace(cfg.model, device=str(device))
    if resume is not None:
        model_cfg = dataclasses.replace(model_cfg, adapter_path=str(resume))
    policy, processor = load_model(model_cfg, trainable=True)
    if not hasattr(policy, "disable_adapter"):
        raise ValueError("PPO needs a LoRA policy (model.lora=true): the reference is the adapter disabled")
    # Sampling never emits an image placeholder token; π is otherwise unchanged (like a top-p cut).
    suppress_media_tokens(policy, processor)
    torch.manual_seed(cfg.seed)
    ac = PolicyAndValue(policy, text_hidden_size(policy)).to(device)
    ac.eval()  # no dropout anywhere: old and new log-probs must agree at the first step ("N details", 6)
    params = [p for p in ac.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl or None, cfg.kl_horizon)
    score_moments = RunningMoments()
    start = 0
    if resume is not None:
        saved = json.loads((resume / STATE_FILE).read_text())
        start, kl_ctl.value = saved["iteration"], saved["kl_coef"]
        score_moments = RunningMoments(**saved.get("score_moments", {}))
        load_value_head(ac.value_head, resume)
        opt.load_state_dict(torch.load(resume / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
        log.info("resumed from %s at iteration %d", resume, start)
    steps_per_iteration = cfg.ppo_epochs * -(-local_batch // mini_batch)
    adalora = Schedule(ac, cfg.steps * steps_per_iteration)
    adalora.done = start * steps_per_iteration
    ac_ddp, opt = acc.prepare(ac, opt)
    eos_id = policy.generation_config.eos_token_id
    eos_id = eos_id if eos_id is not None else processor.tokenizer.eos_token_id
    eos_ids = torch.tensor(eos_id if isinstance(eos_id, list) else [eos_id], device=device)
    state = PPOState(cfg=cfg, acc=acc, ac=acc.unwrap_model(ac_ddp), ac_ddp=ac_ddp, opt=opt, params=params,
                     processor=processor, reward_fn=reward_fn, kl_ctl=kl_ctl, score_moments=score_moments,
                     eos_ids=eos_ids, local_batch=local_batch, mini_batch=mini_batch, micro_batch=micro_batch,
                     adalora=adalora)
    return state, start


# ---- checkpoint ----------------------------------------------------------------------------------------


def save_checkpoint(run: RunDir, state: PPOState, iteration: int) -> None:
    """Adapter + processor + value head + optimizer + state (iteration, β, score moments), renamed into
    `checkpoint/` when complete."""
    with run.checkpoint() as tmp:
        state.ac.policy.save_pretrained(tmp)
        state.processor.save_pretrained(tmp)
        save_value_head(state.ac.value_head, tmp)
        torch.save(state.opt.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"iteration": iteration, "kl_coef": state.kl_ctl.value,
                                                  "score_moments": state.score_moments.state_dict(),
                                                  "config": to_dict(state.cfg)}, indent=2))


def resume_folder(cfg: PPOConfig, run_dir: str) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run."""
    if not cfg.resume_from:
        return None
    folder = Path(run_dir) / "checkpoint" if cfg.resume_from == "auto" else Path(cfg.resume_from)
    if cfg.resume_from == "auto" and not (folder / STATE_FILE).is_file():
        return None
    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"resume_from={cfg.resume_from}: no {STATE_FILE} there; give the checkpoint/ of a ppo run")
    return folder


# ---- the run -------------------------------------------------------------------------------------------


def train_ppo(cfg: PPOConfig, run_dir: str) -> dict:
    """Run PPO per `cfg` into `run_dir`; returns the result dict (also in result.json)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    check_ppo_batches(cfg, acc.num_processes)  # before any model loads
    resume = resume_folder(cfg, run_dir)
    if resume is None:
        run = RunDir(run_dir, to_dict(cfg), is_main=acc.is_main_process)
    else:  # a resumed run keeps its curve up to the checkpoint
        upto = json.loads((resume / STATE_FILE).read_text())["iteration"]
        run = RunDir.resume(run_dir, to_dict(cfg), upto, is_main=acc.is_main_process)
    with run:
        result = _train(cfg, acc, run, resume)
        run.write_result(result)
        return result


def _train(cfg: PPOConfig, acc, run: RunDir, resume: Path | None) -> dict:
    from .loading import count_parameters

    set_threads(cfg.threads)
    split = split_prompts(cfg)
    train, held = split.train, split.measure
    state, start = setup(cfg, acc, resume)
    trainable, total_params = count_parameters(state.ac)
    log.info("PPO: %d train / %d held-out prompts, %d processes × %d rollouts, minibatch %d, micro-batch %d; "
             "%d of %d parameters trainable", len(train), len(held), acc.num_processes, state.local_batch,
             state.mini_batch, state.micro_batch, trainable, total_params)
    device = state.device

    def evaluate() -> dict:
        if not acc.is_main_process:
            return {}
        return evaluate_reward(state.ac.policy, state.processor, held, state.reward_fn,
                               max_new_tokens=cfg.max_new_tokens, image_cache=state.image_cache, prefix=split.prefix)

    first_eval = evaluate() if start == 0 else {}
    if first_eval:
        log.info("held-out before PPO: %s", first_eval)
        run.log_metrics(0, cfg.steps, **_numbers(first_eval), train_seconds=0.0)
    train_seconds, samples_seen, stats, last_eval = 0.0, 0, {}, first_eval
    for iteration in range(start + 1, cfg.steps + 1):
        t_iter = time.monotonic()
        # Per-iteration seeds: a resumed run draws the prompts and samples an unbroken run would have.
        seed = cfg.seed * 1_000_003 + iteration * 1009 + acc.process_index
        torch.manual_seed(seed)
        rng = random.Random(seed)
        records = [rng.choice(train) for _ in range(state.local_batch)]
        batch, stats = rollout(state, records)  # steps 1–5
        stats.update(optimise(state, batch, torch.Generator().manual_seed(seed)))  # step 6
        stats = {k: acc.reduce(torch.tensor(v, device=device), "mean").item() for k, v in stats.items()}
        # The processes' mean KL, so that an adaptive β stays the same in every process (each one's own KL
        # would let them drift apart).
        state.kl_ctl.update(stats["objective/kl"], cfg.batch_size)
        seconds = time.monotonic() - t_iter
        train_seconds += seconds
        samples_seen += cfg.batch_size
        stats.update({"objective/kl_coef": state.kl_ctl.value, "charts/samples_per_s": cfg.batch_size / seconds,
                      "train_seconds": train_seconds})
        if cfg.eval_every and iteration % cfg.eval_every == 0 and iteration != cfg.steps:
            last_eval = evaluate()
            stats.update(_numbers(last_eval))
        run.log_metrics(iteration, cfg.steps, **stats)
        if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0 and iteration != cfg.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(run, state, iteration)
    acc.wait_for_everyone()
    betas = acc.gather(torch.tensor([state.kl_ctl.value], device=device, dtype=torch.float64))
    if float(betas.max() - betas.min()) > 1e-9:
        raise RuntimeError(f"the processes' KL coefficients drifted apart ({betas.tolist()}): each must update "
                           "its adaptive controller with the same, all-reduced KL")
    last_eval = evaluate()
    result = {"steps": cfg.steps, "resumed_from_step": start, "processes": acc.num_processes,
              "train_seconds": round(train_seconds, 2),
              "samples_per_second": round(samples_seen / max(train_seconds, 1e-9), 2),
              "trainable_parameters": trainable, "held_out_prompts": len(held) if split.heldout else 0,
              "heldout": split.source,
              **{k: v for k, v in stats.items() if k.startswith(("objective/", "policy/", "val/", "rewards/"))}}
    before = split.prefix[:-1] + "_before/"  # eval_before/…, or train_before/… when not held out
    result.update({k.replace(split.prefix, before, 1): v for k, v in _numbers(first_eval).items()})
    if acc.is_main_process:
        result.update(last_eval)
        run.log_metrics(cfg.steps, cfg.steps, **_numbers(last_eval), train_seconds=train_seconds)
        save_checkpoint(run, state, cfg.steps)
        result["checkpoint"] = str(run.checkpoint_path)
    acc.wait_for_everyone()
    return result


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, L) log π_T(a_t | s_t) of the tempered policy softmax(z / T): the distribution the answers were
    sampled from. Rollout, training and reference all use it ("The N implementation details of RLHF with
    PPO", Huang et al. 2024: divide the logits by the sampling temperature); at T ≠ 1 the raw logits would
    give importance ratios ≠ 1 before any update."""
    return gather_token_logprobs(logits / temperature, tokens)


# ---- steps 1–5: rollout --------------------------------------------------------------------------------


@torch.no_grad()
def rollout(state: PPOState, records: list[dict]) -> tuple[RolloutBatch, dict]:
    """Steps 1–5: sample, score, normalise, KL-shape, GAE. Returns the batch for step 6 and its metrics.
    The score moments are updated with every process's scores, so they stay identical on all."""
    from .generation import sample

    cfg, ac, kl_coef = state.cfg, state.ac, state.kl_ctl.value
    images = [load_images(r["images"], state.image_cache) for r in records]
    prompts = [r["prompt"] for r in records]

    # 1. Generate answers with sampling at temperature T; recompute log π_old and V_old with the training
    #    forward pass, at the same temperature.
    T = cfg.temperature
    ro = sample(ac.policy, state.processor, images, prompts, temperature=T, max_new_tokens=cfg.max_new_tokens)
    answer_ids, mask = ro.completion_ids, ro.completion_mask  # (B, L)
    L = answer_ids.shape[1]
    inputs = join_prompt_and_answer(ro.prompt_inputs, answer_ids, mask, state.processor)
    logits, values = ac(inputs, L)
    logprobs = token_logprobs(logits, answer_ids, T)  # (B, L) log π_old(a_t|s_t)
    del logits
    ref_logprobs = token_logprobs(reference_logits(ac.policy, inputs, L), answer_ids, T)  # (B, L) log π_ref
    maskf = mask.float()

    # 2. Score: the composed reward (Σ weight · term); an answer cut off without EOS loses `missing_eos_penalty`.
    raw = torch.tensor(state.reward_fn(prompts, ro.texts, images=[r["images"] for r in records],
                                       ground_truth=[r.get("ground_truth") for r in records]), device=state.device)
    has_eos = (torch.isin(answer_ids, state.eos_ids) & mask.bool()).any(-1)
    scores = raw - cfg.missing_eos_penalty * (~has_eos).float()

    # 3. Normalise the scores with the running mean and std of every score so far, this batch included
    #    (TRL PPOTrainer `use_score_norm`; "N implementation details", reward normalisation). The value head
    #    starts at V ≡ 0, so centred returns are what it should predict before it has learnt anything:
    #    with raw scores in [0, 1] and λ < 1 the untrained critic would credit late tokens more than early
    #    ones and so reward short answers.
    norm_scores = scores
    if cfg.score_norm:
        state.score_moments.update(state.acc.gather(scores))
        norm_scores = state.score_moments.normalise(scores)

    # 4. Per-token KL to the reference (estimator cfg.kl_estimator) as a reward penalty −β·KL_t
    #    (Ziegler et al. 2019, eq. 2); the score is added on the last answer token. Optionally whiten the
    #    per-token rewards, keeping their mean (TRL PPOv2 `whiten_rewards`; off by default).
    kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator) * maskf  # (B, L)
    rewards = kl_shaped_rewards(norm_scores, kl, maskf, kl_coef)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, maskf, shift_mean=False) * maskf

    # 5. GAE (Schulman et al. 2016, eq. 16); advantages whitened per batch (CleanRL `norm_adv`).
    advantages, returns = gae(rewards, values * maskf, maskf, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, maskf) * maskf

    kl_sum = kl.sum(1)
    stats = {**state.reward_fn.last,  # each reward term's mean, rewards/<term>/mean
             "objective/scores": scores.mean().item(), "objective/scores_raw": raw.mean().item(),
             "objective/kl": kl_sum.mean().item(), "objective/non_score_reward": (-kl_coef * kl_sum).mean().item(),
             "objective/rlhf_reward": (scores - kl_coef * kl_sum).mean().item(),
             "objective/eos_fraction": has_eos.float().mean().item(),
             "objective/answer_tokens": mask.sum(1).float().mean().item()}
    batch = RolloutBatch(inputs, [len(i) for i in images], answer_ids, maskf, logprobs, values * maskf,
                         advantages, returns)
    return batch, stats


# ---- step 6: optimise ----------------------------------------------------------------------------------


def optimise(state: PPOState, batch: RolloutBatch, gen: torch.Generator) -> dict:
    """Step 6: `ppo_epochs` passes of shuffled minibatches; each minibatch accumulates gradients over
    micro-batches (DDP syncs on the last only), clips the global norm and steps the optimiser."""
    cfg, acc = state.cfg, state.acc
    B, L = batch.answer_ids.shape
    totals: dict[str, float] = {}
    n = 0
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=gen)
        for mb_start in range(0, B, state.mini_batch):
            mb = order[mb_start:mb_start + state.mini_batch]
            micro_starts = list(range(0, state.mini_batch, state.micro_batch))
            for i, mc_start in enumerate(micro_starts):
                rows = mb[mc_start:mc_start + state.micro_batch]
                sync = contextlib.nullcontext() if i == len(micro_starts) - 1 else acc.no_sync(state.ac_ddp)
                with sync:
                    # 6a. log π_θ and V_θ of the rows under the current weights, the tempered policy as in the rollout.
                    logits, vpred = state.ac_ddp(select_rows(batch.inputs, rows, batch.images_per_row), L)
                    mask = batch.mask[rows]
                    logits = logits / cfg.temperature
                    new_logprobs = gather_token_logprobs(logits, batch.answer_ids[rows])
                    # 6b. Clipped surrogate (Schulman et al. 2017, eq. 7), per-token mean over the answer:
                    #     ratio = exp(log π_θ − log π_old),  L_pg = mean( max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε)) )
                    pg_loss, pg_stats = clipped_policy_loss(new_logprobs, batch.logprobs[rows], batch.advantages[rows],
                                                            mask, cfg.cliprange)
                    # 6c. Clipped value loss (OpenAI baselines ppo2):
                    #     V_clip = V_old + clip(V_θ − V_old, −ε_v, ε_v),  L_V = ½ mean( max((V_θ − R)², (V_clip − R)²) )
                    vf_loss, vf_clipfrac = clipped_value_loss(vpred, batch.values[rows], batch.returns[rows], mask,
                                                              cfg.cliprange_value)
                    # 6d. loss = L_pg + c_v · L_V, its gradient averaged over the minibatch's micro-batches.
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    acc.backward((loss + state.adalora.penalty()) / len(micro_starts))
                with torch.no_grad():
                    entropy = masked_mean(entropy_from_logits(logits), mask)
                for k, v in {"policy/clipfrac": pg_stats["clipfrac"], "policy/approxkl": pg_stats["approxkl"],
                             "policy/entropy": entropy, "loss/policy": pg_loss, "val/loss": vf_loss,
                             "val/clipfrac": vf_clipfrac}.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach())
                n += 1
            # 6e. Clip the global gradient norm and step.
            acc.clip_grad_norm_(state.params, cfg.max_grad_norm)
            state.opt.step()
            state.adalora.step()
            state.opt.zero_grad(set_to_none=True)
    return {k: v / max(n, 1) for k, v in totals.items()}
