"""GPU performance check of the training engine at real model sizes: generation tokens/s, reward-model
training (bf16 LoRA, full fine-tune, 4-bit QLoRA) and PPO iterations, with peak GPU memory and model FLOPs
utilisation, for random-weight VLMs built offline at the sizes of Qwen2-VL-2B and LLaVA-1.5-7B.

    .venv/bin/python bench/gpu.py [--models qwen2-vl-2b,llava-1.5-7b] [--out docs/benchmarks/gpu.json]
    .venv/bin/python bench/gpu.py --dry-run          # the same path on CPU at tiny sizes (< 1 min)

What it does, per model:

1. Build the model from its config (no hub): random weights at the real architecture (layers, widths,
   heads, KV heads, vision tower, patch, merge), saved as an ordinary model folder (config, bf16
   safetensors, generation config, a word-level tokenizer padded with filler words to the real vocabulary
   size, the family's processor and chat template). Random weights: speed and memory, not quality. The
   saved generation config suppresses the EOS tokens, so every answer runs to `max_new_tokens` (a random
   model does not know when to stop; fixed lengths make the figures comparable).
2. Run the engine's own CLI subcommands on a demo-world data set (`write_demo_preferences`), each in its
   own process (`--in-process` runs them in this one; the default with `--dry-run`), reading the run
   directory's metrics.jsonl for timing and the process's `torch.cuda.max_memory_allocated` for memory:
   - generate: `python -m rlhf.engine generate`, K = 1, batches of N prompts with one image each, M new
     tokens; the first batch is a warm-up, tokens/s is N·M over the median time of the following batches.
   - reward: `train-reward` with the engine's default reward model (LoRA r = 8 on the LM's q/v, likelihood
     term, mean token head); step time = median time between consecutive steps after the first.
   - reward_full: the same with `model.lora: false` (full fine-tune; by default only the 2B model, whose
     AdamW states fit).
   - ppo: `ppo` with the reward model just trained (the `demo_reward` verifiable reward if that failed);
     iteration time = median over the iterations after the first (rollout + scoring + `ppo_epochs`
     passes).
   - qlora: `train-reward` with `model.qlora: true` (4-bit NF4 base through bitsandbytes, LoRA on top).
   Every run uses the engine's `model.dtype: auto`: bf16 on the GPU, float32 on CPU (the dry run).
3. Model FLOPs utilisation = model FLOPs / time / (`--peak-tflops` · 1e12). Model FLOPs count only the
   weight matmuls, 2 FLOPs per parameter per token and pass (attention's quadratic term and embedding
   look-ups not counted, so MFU is slightly understated; gradient-checkpointing recomputation is not
   counted either, as MFU excludes it by definition):
   - full fine-tune: 6·N·tokens (forward 2, backward 4: input and weight gradients);
   - LoRA and QLoRA: 4·N_lm·tokens for the language model (forward 2 + input gradients 2; the frozen
     base gets no weight gradients, LoRA's own matmuls are < 1% and not counted) and 2·N_vision·image
     tokens for the vision tower and projector, which are frozen and outside the autograd graph
     (forward only);
   - the LM head counts only where logits are computed (generated tokens, the answer positions of PPO
     and of the reward model's likelihood term); N_lm excludes embeddings and the head;
   - a PPO iteration counts every pass: generation (prefill + one token at a time), the rollout's
     log-prob/value forward, the reference forward (adapter disabled), the reward model's forward, and
     `ppo_epochs` LoRA training passes.

Prints a markdown table with figures and ratios (7B over 2B, QLoRA over bf16 LoRA, full fine-tune over
LoRA) and writes all of it as JSON (`--out`). Asserts nothing about speed. Without a GPU, peak GPU memory
and MFU print "n/a (no GPU)".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import io
import itertools
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NO_GPU = "n/a (no GPU)"
GIB = 1024 ** 3
PHASES = ("generate", "reward", "reward_full", "ppo", "qlora")


# ---- model specifications ------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    """A VLM to build: the family (`qwen2_vl` or `llava`), the language model and vision tower sizes, the
    vocabulary size, the image side in pixels and the real checkpoint it stands for."""

    name: str
    family: str
    stands_for: str
    text: dict
    vision: dict
    vocab_size: int
    image_px: int

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + BUILD_VERSION
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


BUILD_VERSION = "1"

# Qwen/Qwen2-VL-2B-Instruct config.json: vocabulary 151,936, tied embeddings, M-RoPE [16, 24, 24].
QWEN2_VL_2B = ModelSpec(
    name="qwen2-vl-2b", family="qwen2_vl", stands_for="Qwen2-VL-2B",
    text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, mrope_section=[16, 24, 24]),
    vision=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2),
    vocab_size=151936, image_px=448)

# llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (features of the second-to-last layer) + Llama-2-7B, vocabulary 32,064.
LLAVA_15_7B = ModelSpec(
    name="llava-1.5-7b", family="llava", stands_for="LLaVA-1.5-7B",
    text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14, projection_dim=768),
    vocab_size=32064, image_px=336)

# --dry-run: the same families a few layers deep and 32-64 wide, 56 px images, a small vocabulary.
DRY_SPECS = {
    "qwen2-vl-2b": dataclasses.replace(
        QWEN2_VL_2B, stands_for="Qwen2-VL-2B (tiny dry-run size)",
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=2048, rms_norm_eps=1e-6, mrope_section=[4, 6, 6]),
        vision=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2),
        vocab_size=512, image_px=56),
    "llava-1.5-7b": dataclasses.replace(
        LLAVA_15_7B, stands_for="LLaVA-1.5-7B (tiny dry-run size)",
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    patch_size=14, projection_dim=32),
        vocab_size=512, image_px=56),
}
REAL_SPECS = {s.name: s for s in (QWEN2_VL_2B, LLAVA_15_7B)}


# ---- tokenizer, processor, model ----------------------------------------------------------------------

# The real models' chat templates (Qwen/Qwen2-VL-*-Instruct's, llava-hf/llava-1.5-*-hf's), as the tests' tiny
# checkpoints of the same families use them.
from tests.engine.tiny_families import LLAVA_TEMPLATE, QWEN2_VL_TEMPLATE  # noqa: E402

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def _world_words() -> list[str]:
    """The demo world's words (prompts, captions, answers) and the chat templates' words."""
    from tokenizers import normalizers, pre_tokenizers

    from rlhf.engine.demo import world

    rng = random.Random(0)
    texts = [world.CAPTION_PROMPT, *world.QUESTION_TEMPLATES.values(), " ".join(world.COLORS),
             " ".join(world.SHAPES), " ".join(world.SIZES), " ".join(world.COUNT_WORDS), "none yes no",
             "you are a helpful assistant . system user assistant : 0 1 2 3 4 5 6 7 8 9"]
    for _ in range(60):
        _, gt = world.make_scene(rng, 32)
        texts.append(world.reference_caption(gt))
        texts += [f"{q} {a}" for q, a in world.vqa_pairs(gt, rng)]
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    norm = normalizers.Lowercase()
    words = {w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))}
    return sorted(w for w in words if "{" not in w and "}" not in w)


def build_tokenizer(family: str, vocab_size: int):
    """Word-level tokenizer (lower-cased, punctuation split off): the family's special tokens, the demo world's
    words, then filler words `w0`, `w1`, ... up to `vocab_size` entries, so that the embedding and the LM head
    have the real model's size (prompts only ever use the real words; a random model samples filler)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = QWEN_SPECIALS if family == "qwen2_vl" else LLAVA_SPECIALS
    vocab = {t: i for i, t in enumerate(specials)}
    for w in _world_words():
        vocab.setdefault(w, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"w{i}", len(vocab))
        i += 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":")])
    tk.add_special_tokens(specials)
    if family == "qwen2_vl":
        return PreTrainedTokenizerFast(
            tokenizer_object=tk, pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<unk>",
            extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                  "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
            chat_template=QWEN2_VL_TEMPLATE, padding_side="left", add_bos_token=False, add_eos_token=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>",
        extra_special_tokens={"image_token": "<image>"}, chat_template=LLAVA_TEMPLATE, padding_side="left",
        add_bos_token=True, add_eos_token=False)


def _qwen2_vl_config(spec: ModelSpec, tok):
    from transformers import Qwen2VLConfig

    text = dict(spec.text)
    mrope = text.pop("mrope_section")
    ids = dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    text_config = dict(**text, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                       eos_token_id=tok.eos_token_id,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope})
    vision = dict(spec.vision, hidden_size=spec.text["hidden_size"])
    return Qwen2VLConfig(text_config=text_config, vision_config=vision, tie_word_embeddings=True, **ids)


def _llava_config(spec: ModelSpec, tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(image_size=spec.image_px, **spec.vision)
    text = LlamaConfig(**spec.text, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    patches = (spec.image_px // spec.vision["patch_size"]) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id,
                       image_seq_length=patches, vision_feature_select_strategy="default", vision_feature_layer=-2,
                       projector_hidden_act="gelu")


def model_config(spec: ModelSpec, tok):
    return _qwen2_vl_config(spec, tok) if spec.family == "qwen2_vl" else _llava_config(spec, tok)


def _save_processor(spec: ModelSpec, tok, out: Path) -> None:
    """The family's processor files. LLaVA's processor is built and saved; Qwen2-VL's is written by hand (its
    class holds a video processor, which needs torchvision to be constructed; the engine's loader then loads
    it without the video processor where torchvision is missing, and AutoProcessor loads it whole where it is
    installed)."""
    if spec.family == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip import CLIPImageProcessorPil

        px = spec.image_px
        image = CLIPImageProcessorPil(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
        LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=spec.vision["patch_size"],
                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                       chat_template=LLAVA_TEMPLATE).save_pretrained(out)
        return
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    # min_pixels = max_pixels = image_px²: every image is resized to image_px × image_px (real Qwen2-VL keeps
    # each image's own resolution, within [3136, 12845056] pixels).
    pixels = dict(size={"shortest_edge": spec.image_px ** 2, "longest_edge": spec.image_px ** 2},
                  patch_size=spec.vision["patch_size"], temporal_patch_size=spec.vision["temporal_patch_size"],
                  merge_size=spec.vision["spatial_merge_size"])
    image = Qwen2VLImageProcessorPil(**pixels).to_dict()
    image["image_processor_type"] = image["image_processor_type"].removesuffix("Pil")
    config = {"image_processor": image, "video_processor": {**pixels, "video_processor_type": "Qwen2VLVideoProcessor"},
              "processor_class": "Qwen2VLProcessor"}
    tok._set_processor_class("Qwen2VLProcessor")
    tok.save_pretrained(out)
    (out / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    (out / "chat_template.jinja").write_text(QWEN2_VL_TEMPLATE)


def parameter_counts(config) -> dict[str, int]:
    """Parameters by part, from a model on the meta device (no memory): vision tower + projector, language
    model without embeddings and head, embeddings, LM head (counted from the config when tied)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    counts = {"vision": 0, "language": 0, "embedding": 0}
    for name, p in model.named_parameters():
        if any(w in name for w in ("visual", "vision_tower", "multi_modal_projector")):
            counts["vision"] += p.numel()
        elif "embed_tokens" in name:
            counts["embedding"] += p.numel()
        elif "lm_head" not in name:
            counts["language"] += p.numel()
    text = config.get_text_config()
    counts["lm_head"] = text.vocab_size * text.hidden_size
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def build_model_folder(spec: ModelSpec, root: Path, device: str) -> tuple[Path, dict]:
    """Build `spec` into `root/<name>-<key>` unless already there; returns (folder, build info)."""
    import torch
    from transformers import AutoModelForImageTextToText

    out = root / f"{spec.name}-{spec.key()}"
    info_file = out / "bench_build.json"
    if info_file.is_file():
        return out, json.loads(info_file.read_text())
    t0 = time.perf_counter()
    tmp = root / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec.family, spec.vocab_size)
    config = model_config(spec, tok)
    counts = parameter_counts(config)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    torch.manual_seed(0)
    try:
        with torch.device(dev):  # initialised on the GPU when there is one: seconds instead of minutes for 7B
            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    except (RuntimeError, ValueError) as e:
        if dev.type == "cpu":
            raise
        print(f"building on {dev} failed ({type(e).__name__}: {e}); building on the CPU", flush=True)
        dev = torch.device("cpu")
        with torch.device(dev):
            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    gc_ = model.generation_config
    eos = sorted({tok.eos_token_id, *([tok.convert_tokens_to_ids("<|endoftext|>")] if spec.family == "qwen2_vl"
                                      else [])})
    gc_.pad_token_id, gc_.bos_token_id = tok.pad_token_id, tok.bos_token_id
    gc_.eos_token_id = eos[0] if len(eos) == 1 else eos
    gc_.suppress_tokens = eos  # every answer runs to max_new_tokens (module docstring)
    model.save_pretrained(tmp, safe_serialization=True)
    _save_processor(spec, tok, tmp)
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    info = {"spec": dataclasses.asdict(spec), "parameters": counts, "vocab_size": len(tok),
            "build_seconds": round(time.perf_counter() - t0, 1), "built_on": str(dev)}
    (tmp / "bench_build.json").write_text(json.dumps(info, indent=2))
    if out.exists():  # a stale partial folder of an older run
        import shutil

        shutil.rmtree(out)
    os.rename(tmp, out)
    return out, info


# ---- data ----------------------------------------------------------------------------------------------


def write_data(work: Path, s: argparse.Namespace) -> dict[str, Path]:
    """Demo-world prompts and preference pairs (128 px scenes; each processor resizes them), plus a
    generation prompt set of (repeats + 1) batches and a pair file of exactly steps × batch pairs (no
    partial batch)."""
    from rlhf.engine.data import read_jsonl
    from rlhf.engine.demo.annotators import write_demo_preferences

    data = work / "data"
    n = max(8, (s.gen_repeats + 1) * s.gen_prompts, s.ppo_batch)
    paths = write_demo_preferences(data, n, seed=0, k=4)
    prompts = read_jsonl(paths["prompts"])
    gen = [dict(prompts[i % len(prompts)], prompt_id=f"g{i:05d}") for i in range((s.gen_repeats + 1) * s.gen_prompts)]
    paths["gen_prompts"] = data / "gen_prompts.jsonl"
    paths["gen_prompts"].write_text("".join(json.dumps(r) + "\n" for r in gen))
    pairs = read_jsonl(paths["preferences_train"])
    need = max(s.rm_steps, s.qlora_steps) * s.rm_batch
    rows = [dict(pairs[i % len(pairs)], id=f"b{i:05d}") for i in range(need)]
    paths["rm_pairs"] = data / "rm_pairs.jsonl"
    paths["rm_pairs"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def token_counts(folder: Path, paths: dict[str, Path], n_pairs: int = 32) -> dict:
    """Tokens the model sees, from its own processor (the engine's loader and encoders): prompt tokens of one
    generation prompt (image tokens included), vision-tower tokens per image, and the mean sequence length
    of the reward model's pairs (chosen and rejected, non-pad tokens) with its answer part."""
    from rlhf.engine.data import encode_completions, encode_prompts, load_images, read_jsonl, read_preferences
    from rlhf.engine.loading import load_processor

    processor = load_processor(str(folder))
    prompt = read_jsonl(paths["gen_prompts"])[0]
    images = load_images([str(paths["gen_prompts"].parent / p) for p in prompt["images"]])
    batch = encode_prompts(processor, [images], [prompt["prompt"]])
    prompt_tokens = int(batch["attention_mask"].sum())
    if "image_grid_thw" in batch:  # Qwen2-VL: patches before the 2 x 2 merge
        vision_tokens = int(batch["image_grid_thw"].prod(-1).sum())
    else:  # CLIP: patches + the class token
        side = batch["pixel_values"].shape[-1]
        vision_tokens = (side // processor.patch_size) ** 2 + 1
    pairs = read_preferences(paths["rm_pairs"])[:n_pairs]
    ims = [load_images(r["images"]) for r in pairs]
    enc = encode_completions(processor, ims + ims, [r["prompt"] for r in pairs] * 2,
                             [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs])
    seq = enc.inputs["attention_mask"].sum(-1).float()
    answer = enc.completion_mask.sum(-1).float()
    return {"prompt_tokens": prompt_tokens, "vision_tokens_per_image": vision_tokens,
            "rm_sequence_tokens": round(float(seq.mean()), 1), "rm_answer_tokens": round(float(answer.mean()), 1)}


# ---- running the engine's CLI --------------------------------------------------------------------------


def cli_with_peak(kind: str, config_path: str, run_dir: str) -> dict:
    """`python -m rlhf.engine KIND --config ... --run-dir ...` (its `main`), then the process's peak GPU
    memory; written to <run dir>/bench_phase.json too."""
    import torch

    from rlhf.engine.cli import main as cli_main

    cuda = torch.cuda.is_available()
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = cli_main([kind, "--config", config_path, "--run-dir", run_dir])
    out = {"rc": rc, "wall_seconds": round(time.perf_counter() - t0, 2),
           "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
           "peak_cuda_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "bench_phase.json").write_text(json.dumps(out))
    return out


def run_phase(kind: str, cfg: dict, run_dir: Path, in_process: bool, timeout: float) -> dict:
    """Run one engine subcommand; returns cli_with_peak's dict plus the run's result.json and metrics rows."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"{run_dir.name}.config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    log_path = run_dir.parent / f"{run_dir.name}.log"
    if in_process:
        logger = logging.getLogger("rlhf.engine")
        handlers = list(logger.handlers)
        # The command's log and progress bars go to the phase's log file, its printed result nowhere (it is in
        # result.json), as with a command in its own process.
        with open(log_path, "w") as log_file, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(log_file):
            try:
                out = cli_with_peak(kind, str(cfg_path), str(run_dir))
            finally:
                for h in logger.handlers[len(handlers):]:
                    logger.removeHandler(h)
        gc.collect()
    else:
        with open(log_path, "w") as log_file:
            try:
                proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, str(cfg_path),
                                       str(run_dir)], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                      timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = 124
        phase_file = run_dir / "bench_phase.json"
        out = json.loads(phase_file.read_text()) if phase_file.is_file() else {"rc": rc, "peak_cuda_bytes": None}
        out["rc"] = rc
    result_file, metrics_file = run_dir / "result.json", run_dir / "metrics.jsonl"
    out["result"] = json.loads(result_file.read_text()) if result_file.is_file() else {}
    out["metrics"] = ([json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
                      if metrics_file.is_file() else [])
    if out["rc"] != 0:
        tail = log_path.read_text()[-2000:] if log_path.is_file() else ""
        out["error"] = out["result"].get("error") or (f"timed out after {timeout:.0f} s" if out["rc"] == 124
                                                      else f"exit code {out['rc']}") + ("\n" + tail if tail else "")
    return out


def _diffs(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v > 0]
    return statistics.median(values) if values else None


# ---- FLOPs ---------------------------------------------------------------------------------------------


def forward_flops(p: dict, lm_tokens: float, vision_tokens: float, head_tokens: float) -> float:
    """2 FLOPs per parameter per token of the language model, vision tower (+ projector) and LM head."""
    return 2 * (p["language"] * lm_tokens + p["vision"] * vision_tokens + p["lm_head"] * head_tokens)


def train_flops(p: dict, lm_tokens: float, vision_tokens: float, head_tokens: float, full: bool) -> float:
    """One training pass. Full fine-tune: 6·N per token everywhere. LoRA/QLoRA: 4·N for the language model and
    the head (forward + input gradients), 2·N for the frozen vision tower (forward only)."""
    if full:
        return 3 * forward_flops(p, lm_tokens, vision_tokens, head_tokens)
    return 2 * (2 * p["language"] * lm_tokens + p["vision"] * vision_tokens + 2 * p["lm_head"] * head_tokens)


def reward_step_flops(p: dict, t: dict, pairs: int, full: bool) -> float:
    """A reward-model step: chosen and rejected of `pairs` pairs, one image each; the LM head reads the
    answer positions (likelihood term) and the last token."""
    seqs = 2 * pairs
    return train_flops(p, seqs * t["rm_sequence_tokens"], seqs * t["vision_tokens_per_image"],
                       seqs * (t["rm_answer_tokens"] + 1), full)


def ppo_iteration_flops(p: dict, t: dict, s: argparse.Namespace, with_rm: bool) -> float:
    """A PPO iteration of `ppo_batch` rollouts of `ppo_tokens` answer tokens (module docstring)."""
    B, M, P, V = s.ppo_batch, s.ppo_tokens, t["prompt_tokens"], t["vision_tokens_per_image"]
    generate = forward_flops(p, B * (P + M), B * V, B * M)
    one_pass = forward_flops(p, B * (P + M), B * V, B * (M + 1))
    passes = 2 + (1 if with_rm else 0)  # rollout log-probs/values, reference, reward model
    training = s.ppo_epochs * train_flops(p, B * (P + M), B * V, B * (M + 1), full=False)
    return generate + passes * one_pass + training


def generation_flops(p: dict, t: dict, n: int, m: int) -> float:
    return forward_flops(p, n * (t["prompt_tokens"] + m), n * t["vision_tokens_per_image"], n * m)


# ---- one model -----------------------------------------------------------------------------------------


def bench_model(spec: ModelSpec, s: argparse.Namespace, paths: dict, models_root: Path, runs: Path,
                cuda_name: str | None) -> dict:
    folder, info = build_model_folder(spec, models_root, s.device)
    print(f"{spec.name}: {info['parameters']['total']:,} parameters in {folder} "
          f"(built in {info['build_seconds']} s on {info['built_on']})", flush=True)
    tokens = token_counts(folder, paths)
    p = info["parameters"]
    out = {"stands_for": spec.stands_for, "folder": str(folder), "parameters": p, "vocab_size": info["vocab_size"],
           "vocab_note": "word-level tokenizer padded with filler words to the real vocabulary size"
           if not s.dry_run else "small word-level vocabulary (dry run)",
           "image_px": spec.image_px, "build_seconds": info["build_seconds"], **tokens}
    peak_tflops = s.peak_tflops if cuda_name else None
    model = {"path": str(folder), "device": s.device, "gradient_checkpointing": s.gradient_checkpointing}
    common = {"in_process": s.in_process, "timeout": s.phase_timeout}

    def memory(r: dict) -> float | None:
        return round(r["peak_cuda_bytes"] / GIB, 2) if r.get("peak_cuda_bytes") is not None else None

    def mfu(flops: float, seconds: float | None) -> float | None:
        if not peak_tflops or not seconds:
            return None
        return round(flops / seconds / (peak_tflops * 1e12), 4)

    def failed(r: dict) -> dict:
        return {"status": "failed", "error": r.get("error", "")[-1500:], "peak_gpu_gib": memory(r)}

    if "generate" in s.phases:
        cfg = {"model": {**model, "gradient_checkpointing": False}, "prompts_file": str(paths["gen_prompts"]), "k": 1,
               "batch_size": s.gen_prompts, "max_new_tokens": s.gen_tokens, "max_resample_rounds": 0}
        r = run_phase("generate", cfg, runs / spec.name / "generate", **common)
        times = [row["time"] for row in r["metrics"] if "prompts_done" in row]
        batch_s = _median(_diffs(times))
        if r["rc"] == 0 and batch_s:
            flops = generation_flops(p, tokens, s.gen_prompts, s.gen_tokens)
            out["generate"] = {"status": "ok", "prompts": s.gen_prompts, "new_tokens": s.gen_tokens,
                               "timed_batches": len(times) - 1, "batch_seconds": round(batch_s, 4),
                               "tokens_per_s": round(s.gen_prompts * s.gen_tokens / batch_s, 2),
                               "flops_per_batch": flops, "mfu": mfu(flops, batch_s), "peak_gpu_gib": memory(r)}
        else:
            out["generate"] = failed(r) if r["rc"] else {"status": "failed", "error": "fewer than 2 batches timed"}
        print(f"  generate: {_show(out['generate'], 'tokens_per_s', 'tokens/s')}", flush=True)

    def reward_phase(name: str, extra: dict, steps: int, full: bool) -> dict:
        cfg = {"model": {**model, **extra}, "train_file": str(paths["rm_pairs"]), "eval_fraction": 0.0,
               "max_steps": steps, "batch_size": s.rm_batch, "log_every": 1, "warmup_steps": 1, "seed": 0}
        r = run_phase("train-reward", cfg, runs / spec.name / name, **common)
        times = [row["time"] for row in r["metrics"] if "loss" in row]
        step_s = _median(_diffs(times))
        if r["rc"] != 0 or not step_s:
            return failed(r) if r["rc"] else {"status": "failed", "error": "fewer than 2 steps timed"}
        flops = reward_step_flops(p, tokens, s.rm_batch, full)
        return {"status": "ok", "pairs_per_step": s.rm_batch, "timed_steps": len(times) - 1,
                "step_seconds": round(step_s, 4), "pairs_per_s": round(s.rm_batch / step_s, 2),
                "pairs_per_s_with_warmup": r["result"].get("pairs_per_second"), "flops_per_step": flops,
                "mfu": mfu(flops, step_s), "peak_gpu_gib": memory(r),
                "checkpoint": r["result"].get("checkpoint")}

    if "reward" in s.phases:
        out["reward"] = reward_phase("reward", {"lora": True}, s.rm_steps, full=False)
        print(f"  reward (LoRA): {_show(out['reward'], 'step_seconds', 's/step')}", flush=True)
    if "reward_full" in s.phases and spec.name in s.full_ft:
        out["reward_full"] = reward_phase("reward_full", {"lora": False}, s.rm_steps, full=True)
        print(f"  reward (full fine-tune): {_show(out['reward_full'], 'step_seconds', 's/step')}", flush=True)
    elif "reward_full" in s.phases:
        out["reward_full"] = {"status": "skipped", "reason": "not in --full-ft (default: the 2B model only; a 7B full "
                              "fine-tune needs ~56 GB for bf16 weights, gradients and AdamW states before activations)"}

    if "ppo" in s.phases:
        rm = (out.get("reward") or {}).get("checkpoint")
        reward = {"reward_model_path": rm} if rm else {"verifiable_reward": "demo_reward"}
        cfg = {"model": {**model, "lora": True}, "prompts_file": str(paths["prompts"]), "eval_prompts": 0,
               "steps": s.ppo_steps, "batch_size": s.ppo_batch, "num_mini_batches": s.ppo_minibatches,
               "ppo_epochs": s.ppo_epochs, "max_new_tokens": s.ppo_tokens, "seed": 0, **reward}
        r = run_phase("ppo", cfg, runs / spec.name / "ppo", **common)
        iters = [s.ppo_batch / row["charts/samples_per_s"] for row in r["metrics"]
                 if row.get("charts/samples_per_s")][1:]  # the first iteration is the warm-up
        it_s = _median(iters)
        if r["rc"] == 0 and it_s:
            flops = ppo_iteration_flops(p, tokens, s, with_rm=bool(rm))
            out["ppo"] = {"status": "ok", "reward": "reward model" if rm else "demo_reward (verifiable)",
                          "rollouts": s.ppo_batch, "answer_tokens": s.ppo_tokens, "ppo_epochs": s.ppo_epochs,
                          "num_mini_batches": s.ppo_minibatches, "timed_iterations": len(iters),
                          "iteration_seconds": round(it_s, 4), "samples_per_s": round(s.ppo_batch / it_s, 2),
                          "flops_per_iteration": flops, "mfu": mfu(flops, it_s), "peak_gpu_gib": memory(r)}
        else:
            out["ppo"] = failed(r) if r["rc"] else {"status": "failed", "error": "fewer than 2 iterations"}
        print(f"  ppo: {_show(out['ppo'], 'iteration_seconds', 's/iteration')}", flush=True)

    if "qlora" in s.phases:
        if s.dry_run and not s.qlora_on_cpu and not cuda_name:
            out["qlora"] = {"status": "skipped", "reason": "dry run without --qlora-on-cpu"}
        else:
            out["qlora"] = reward_phase("qlora", {"lora": True, "qlora": True}, s.qlora_steps, full=False)
            if cuda_name is None and out["qlora"]["status"] == "ok":
                out["qlora"]["note"] = "bitsandbytes 4-bit on CPU: not the CUDA kernels"
        print(f"  qlora: {_show(out['qlora'], 'step_seconds', 's/step')}", flush=True)
    return out


def _why(r: dict) -> str:
    """First line of a failed or skipped phase's error or reason."""
    text = r.get("error") or r.get("reason") or ""
    return text.splitlines()[0] if text else ""


def _show(r: dict, key: str, unit: str) -> str:
    if r.get("status") == "ok":
        return f"{r[key]} {unit}" + (f", peak {r['peak_gpu_gib']} GiB" if r.get("peak_gpu_gib") is not None else "")
    return f"{r.get('status')}: {_why(r)}"


# ---- report --------------------------------------------------------------------------------------------


def _fmt(x, unit: str = "", digits: int = 2, gpu_only: bool = False, cuda: bool = True) -> str:
    if x is None:
        return NO_GPU if gpu_only and not cuda else "–"
    return f"{x:.{digits}f}{unit}"


def _num(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _pct(x, cuda: bool) -> str:
    return (NO_GPU if not cuda else "–") if x is None else f"{100 * x:.1f}%"


ROWS = [  # phase, label, throughput key, throughput unit, time key, flops key
    ("generate", "generation", "tokens_per_s", "tokens/s", "batch_seconds", "flops_per_batch"),
    ("reward", "reward model, LoRA", "pairs_per_s", "pairs/s", "step_seconds", "flops_per_step"),
    ("reward_full", "reward model, full fine-tune", "pairs_per_s", "pairs/s", "step_seconds", "flops_per_step"),
    ("ppo", "PPO iteration", "samples_per_s", "samples/s", "iteration_seconds", "flops_per_iteration"),
    ("qlora", "reward model, 4-bit QLoRA", "pairs_per_s", "pairs/s", "step_seconds", "flops_per_step"),
]


def markdown(results: dict) -> str:
    cuda = results["meta"]["cuda"]
    lines = ["| model | phase | throughput | s per batch / step / iteration | model TFLOP | MFU | peak GPU memory |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, m in results["models"].items():
        for phase, label, tkey, tunit, skey, fkey in ROWS:
            r = m.get(phase)
            if r is None:
                continue
            if r["status"] != "ok":
                lines.append(f"| {name} | {label} | {r['status']}: {_why(r)[:100]} | | | | |")
                continue
            lines.append(f"| {name} | {label} | {_num(r[tkey])} {tunit} | {r[skey]:.3f} | {r[fkey] / 1e12:.3g} | "
                         f"{_pct(r['mfu'], cuda)} | {_fmt(r['peak_gpu_gib'], ' GiB', gpu_only=True, cuda=cuda)} |")
    lines += ["", "| ratio | " + " | ".join(results["models"]) + " |", "|---|" + "---:|" * len(results["models"])]
    for label, num, den, key in (("QLoRA / LoRA step time", "qlora", "reward", "step_seconds"),
                                 ("QLoRA / LoRA peak memory", "qlora", "reward", "peak_gpu_gib"),
                                 ("full fine-tune / LoRA step time", "reward_full", "reward", "step_seconds"),
                                 ("full fine-tune / LoRA peak memory", "reward_full", "reward", "peak_gpu_gib")):
        cells = []
        for m in results["models"].values():
            x, y = (m.get(num) or {}).get(key), (m.get(den) or {}).get(key)
            cells.append(f"{x / y:.2f}×" if x and y else (NO_GPU if "memory" in label and not cuda else "–"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    names = list(results["models"])
    if len(names) >= 2:
        a, b = results["models"][names[-1]], results["models"][names[0]]
        lines += ["", f"| {names[-1]} / {names[0]} | time | model FLOPs | parameters | peak memory |",
                  "|---|---:|---:|---:|---:|"]
        params = a["parameters"]["total"] / b["parameters"]["total"]
        for phase, label, _, _, skey, fkey in ROWS:
            ra, rb = a.get(phase) or {}, b.get(phase) or {}
            if ra.get("status") != "ok" or rb.get("status") != "ok":
                continue
            mem = (f"{ra['peak_gpu_gib'] / rb['peak_gpu_gib']:.2f}×" if ra.get("peak_gpu_gib") and rb.get("peak_gpu_gib")
                   else NO_GPU if not cuda else "–")
            lines.append(f"| {label} | {ra[skey] / rb[skey]:.2f}× | {ra[fkey] / rb[fkey]:.2f}× | {params:.2f}× | {mem} |")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU, a few steps: checks the path")
    ap.add_argument("--models", default="qwen2-vl-2b,llava-1.5-7b", help=f"comma-separated, of {list(REAL_SPECS)}")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {list(PHASES)}")
    ap.add_argument("--full-ft", default="qwen2-vl-2b", help="models whose reward model is also fully fine-tuned")
    ap.add_argument("--out", help="results JSON (default docs/benchmarks/gpu.json; <work>/gpu.json with --dry-run)")
    ap.add_argument("--work", help="folder for data, runs and (by default) the built models (default: a temp folder)")
    ap.add_argument("--models-dir", help="where built models are kept and reused (default <work>/models)")
    ap.add_argument("--device", default="auto", help="model.device of every run: auto, cuda, cuda:N, cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the accelerator's peak dense bf16 TFLOP/s for MFU (989: H100 / H200 SXM)")
    ap.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                    help="run the engine commands in this process (the default with --dry-run: no start-up per "
                    "command); otherwise each runs in its own process, so that its peak memory is its own")
    ap.add_argument("--allow-cpu", action="store_true", help="run the real sizes even without a GPU (hours)")
    ap.add_argument("--phase-timeout", type=float, default=3600.0, help="seconds per engine command (own process)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="model.gradient_checkpointing in training")
    ap.add_argument("--qwen-image-px", type=int, default=448, help="Qwen2-VL image side (resized to it; 448 px = "
                    "1024 patches = 256 image tokens)")
    ap.add_argument("--gen-prompts", type=int, default=16, help="N: prompts per generate batch, one image each")
    ap.add_argument("--gen-tokens", type=int, default=128, help="M: new tokens per answer")
    ap.add_argument("--gen-repeats", type=int, default=3, help="timed batches after the warm-up batch")
    ap.add_argument("--rm-batch", type=int, default=8, help="preference pairs per reward-model step")
    ap.add_argument("--rm-steps", type=int, default=6, help="reward-model steps (the first is a warm-up)")
    ap.add_argument("--qlora-steps", type=int, default=6, help="QLoRA reward-model steps (the first is a warm-up)")
    ap.add_argument("--ppo-batch", type=int, default=16, help="rollouts per PPO iteration")
    ap.add_argument("--ppo-minibatches", type=int, default=2)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--ppo-tokens", type=int, default=64, help="answer tokens per rollout")
    ap.add_argument("--ppo-steps", type=int, default=3, help="PPO iterations (the first is a warm-up)")
    ap.add_argument("--qlora-on-cpu", action=argparse.BooleanOptionalAction, default=True,
                    help="with --dry-run and no GPU, run the QLoRA phase through bitsandbytes' CPU path")
    s = ap.parse_args(argv)
    if s.in_process is None:
        s.in_process = s.dry_run
    if s.dry_run:
        small = dict(gen_prompts=2, gen_tokens=4, gen_repeats=1, rm_batch=2, rm_steps=3, qlora_steps=2, ppo_batch=2,
                     ppo_minibatches=1, ppo_epochs=1, ppo_tokens=4, ppo_steps=2)
        for k, v in small.items():  # explicit flags win
            if getattr(s, k) == ap.get_default(k):
                setattr(s, k, v)
        if s.device == "auto":
            s.device = "cpu"
    s.phases = [p for p in s.phases.split(",") if p]
    s.full_ft = [m for m in s.full_ft.split(",") if m]
    s.models = [m for m in s.models.split(",") if m]
    for m in s.models:
        if m not in REAL_SPECS:
            ap.error(f"unknown model {m!r}; one of {list(REAL_SPECS)}")
    for p in s.phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r}; one of {list(PHASES)}")
    return s


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":  # one engine command in its own process
        out = cli_with_peak(*sys.argv[2:5])
        return out["rc"]
    s = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    cuda_name = torch.cuda.get_device_name() if torch.cuda.is_available() and s.device != "cpu" else None
    if cuda_name is None and not s.dry_run and not s.allow_cpu:
        print("no GPU here: the real sizes would take hours on CPU. Use --dry-run to check the path at tiny sizes, "
              "or --allow-cpu to run them anyway.", file=sys.stderr)
        return 2
    work = Path(s.work) if s.work else Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    models_root = Path(s.models_dir) if s.models_dir else work / "models"
    out_path = Path(s.out) if s.out else (work / "gpu.json" if s.dry_run else ROOT / "docs" / "benchmarks" / "gpu.json")
    t0 = time.perf_counter()
    print(f"{'dry run, ' if s.dry_run else ''}device {cuda_name or 'cpu (no GPU)'}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads; work {work}", flush=True)
    paths = write_data(work, s)
    specs = DRY_SPECS if s.dry_run else REAL_SPECS
    results = {"meta": {"dry_run": s.dry_run, "cuda": cuda_name is not None, "device": cuda_name or "cpu",
                        "no_gpu_note": None if cuda_name else NO_GPU, "peak_tflops": s.peak_tflops if cuda_name else None,
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "settings": {k: v for k, v in vars(s).items() if k not in ("out", "work", "models_dir")}},
               "models": {}}
    for name in s.models:
        spec = specs[name]
        if spec.family == "qwen2_vl" and not s.dry_run:
            spec = dataclasses.replace(spec, image_px=s.qwen_image_px)
        results["models"][name] = bench_model(spec, s, paths, models_root, work / "runs", cuda_name)
    results["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1, default=str))
    print()
    print(markdown(results))
    print(f"\n{results['meta']['seconds']} s in all; results in {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
