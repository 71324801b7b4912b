"""Supervised fine-tuning of a policy on a prompt set with references (loss on the answer only),
LoRA/QLoRA or full, runnable under `accelerate launch`. The checkpoint is the adapter (or the full model)
plus the processor, loadable as `model.adapter_path` (or `model.path`) by every other subcommand.

Lines marked `"split": "eval"` are held out: never trained on (heldout.py). SFT reports no held-out figure
of its own; a round's evaluate step measures the policy on the held-out prompts.

Why our loop and not TRL's SFTTrainer (which DPO/GRPO use, trl_policy.py). Tried with TRL 1.16 on the tiny demo
model on CPU: a conversational prompt-completion dataset with images trains (loss on the answer only), so the
trainer itself works. It does not keep this command's behaviour:
- tokenization: TRL's vision collator writes the answer through the chat template (which ends a turn with the
  template's own end-of-turn text, e.g. Gemma 3's `<end_of_turn>`) and right-pads; the engine's answers are the
  text + the tokenizer's EOS after a left-padded prompt (data.encode_completions), the encoding generate, PPO,
  the reward model and the DPO margin all use. On the demo model the two write the same text (checked on
  decoded rows); where a family's end of turn is not its EOS, an SFT policy would learn to end answers as
  nothing else in the engine samples or scores them, and the family matrix (tests/engine/test_families.py:
  one BOS, PaliGemma's processor) was not re-verified through TRL's collator;
- data order: each step here draws `batch_size` prompts with replacement and one of their references at random
  (seeded per process); the Trainer walks shuffled epochs of fixed rows;
- metrics.jsonl: the Trainer logs `learning_rate` and a loss averaged over the logging window, not `lr`, the
  step's loss and `charts/examples_per_s`, which the run pages chart.
Keeping all three means our collator, our sampler, our optimiser and schedule and a renaming callback inside
SFTTrainer, which then runs nothing of its own but the loop below.
"""

from __future__ import annotations

import logging
import random
import time

import torch

from .adalora import Schedule
from .config import SFTConfig, to_dict
from .data import encode_completions, load_images, read_prompts
from .losses import sft_loss
from .rundir import RunDir, progress
from .schedules import warmup_cosine_schedule

log = logging.getLogger(__name__)


def completion_labels(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) labels: the token ids on the completion, -100 elsewhere (prompt and padding)."""
    return input_ids.masked_fill(completion_mask == 0, -100)


def train_sft(cfg: SFTConfig, run_dir: str) -> dict:
    """Fine-tune, save the checkpoint and return the result dict (also in result.json)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .loading import count_parameters, load_model

    acc = Accelerator(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    run = RunDir(run_dir, to_dict(cfg), is_main=acc.is_main_process)
    with run:
        set_seed(cfg.seed)
        rows = read_prompts(cfg.train_file)
        records = [r for r in rows if r.get("reference") and r.get("split") != "eval"]  # held out: never trained on
        held = sum(r.get("split") == "eval" for r in rows)
        if held:
            log.info("SFT: %d split=eval lines of %s are held out, not trained on", held, cfg.train_file)
        if not records:
            raise ValueError(f"{cfg.train_file}: no line has a `reference`; SFT needs reference answers")
        if cfg.batch_size % acc.num_processes:
            raise ValueError(f"batch_size={cfg.batch_size} must divide by {acc.num_processes} processes")
        per_device = cfg.batch_size // acc.num_processes
        cfg.model.device = str(acc.device)
        model, processor = load_model(cfg.model, trainable=True)
        trainable, total_params = count_parameters(model)
        log.info("SFT on %d examples; %d of %d parameters trainable", len(records), trainable, total_params)
        params = [p for p in model.parameters() if p.requires_grad]
        adalora = Schedule(model, cfg.steps)  # AdaLoRA's rank budget (a no-op for other methods)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = warmup_cosine_schedule(opt, cfg.warmup_steps, cfg.steps)
        model, opt = acc.prepare(model, opt)
        rng = random.Random(cfg.seed + acc.process_index)
        cache: dict = {}
        t0 = time.monotonic()
        model.train()
        for step in progress(range(1, cfg.steps + 1), desc="sft", enabled=acc.is_main_process):
            batch = [rng.choice(records) for _ in range(per_device)]
            enc = encode_completions(processor, [load_images(r["images"], cache) for r in batch],
                                     [r["prompt"] for r in batch],
                                     [rng.choice(r["reference"]) for r in batch]).to(acc.device)
            logits = model(**enc.inputs).logits
            loss = sft_loss(logits, completion_labels(enc.inputs["input_ids"], enc.completion_mask))
            acc.backward(loss + adalora.penalty())
            acc.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            adalora.step()
            opt.zero_grad(set_to_none=True)
            if step % cfg.log_every == 0 or step == cfg.steps:
                run.log_metrics(step, cfg.steps, loss=acc.reduce(loss.detach(), "mean").item(),
                                lr=sched.get_last_lr()[0],
                                **{"charts/examples_per_s": step * cfg.batch_size / (time.monotonic() - t0)})
        acc.wait_for_everyone()
        result = {"steps": cfg.steps, "final_loss": loss.item(), "train_seconds": round(time.monotonic() - t0, 2),
                  "trainable_parameters": trainable}
        if acc.is_main_process:
            with run.checkpoint() as tmp:
                acc.unwrap_model(model).save_pretrained(tmp)
                processor.save_pretrained(tmp)
            result["checkpoint"] = str(run.checkpoint_path)
            result["adapter"] = bool(cfg.model.lora)
        run.write_result(result)
        return result
