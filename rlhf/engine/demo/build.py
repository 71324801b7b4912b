"""Build the tiny offline demo VLM: a word-level tokenizer trained locally, a LLaVA-style model (CLIP
vision tower + Llama decoder) from configs, supervised on the shapes world, saved with save_pretrained.

After the build the model is an ordinary Hugging Face folder, loaded through `loading.load_model` like
any real VLM. Building is seeded and deterministic (fixed step count) and cached under
`<data dir>/models/demo-<hash of the build config>`; a second call with the same config returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import BuildDemoConfig
from ..loading import MODEL_PATHS, ModelLoadError
from ..losses import sft_loss
from ..schedules import warmup_cosine_schedule
from . import world
from .shipped import (  # noqa: F401  (re-exported: the build's cache key and the shipped base)
    CHECKSUMS,
    SHIPPED_DIR,
    DemoModelError,
    config_hash,
    demo_model_dir,
    ship,
    shipped_build,
    verify_checksums,
)

log = logging.getLogger(__name__)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}user: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}assistant: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{{ message['content'][0]['text'] }}"
    "{% endif %}{{ eos_token }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [world.CAPTION_PROMPT, *world.QUESTION_TEMPLATES.values(), "user: assistant:", "none yes no",
             "it is maybe i do not know left right [ ] 0 1 2 3 4 5 6 7 8 9"]
    texts += [" ".join(world.COLORS), " ".join(world.SHAPES), " ".join(world.SIZES), " ".join(world.COUNT_WORDS)]
    texts += [" ".join(s + "s" for s in world.SHAPES), "shape shapes"]
    for _ in range(300):
        _, gt = world.make_scene(rng, 64)
        texts.append(world.reference_caption(gt))
        texts += [f"{q} {a}" for q, a in world.vqa_pairs(gt, rng)]
    return texts


def build_tokenizer():
    """Word-level tokenizer over the world's language (lower-cased, punctuation split off)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    norm = normalizers.Lowercase()
    vocab_words = set()
    for text in _corpus():
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            vocab_words.add(w)
    for s in world.QUESTION_TEMPLATES.values():
        vocab_words.update(w for w, _ in pre.pre_tokenize_str(s.lower()) if "{" not in w)
    vocab_words -= {"{", "}"} | {w for w in vocab_words if "{" in w or "}" in w}
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in sorted(vocab_words):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = norm
    tk.pre_tokenizer = pre
    # WordLevel joins tokens with spaces; the WordPiece decoder's cleanup removes the space before
    # punctuation, Replace the one before ':'.
    tk.decoder = decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":")])
    tk.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"}, chat_template=CHAT_TEMPLATE, padding_side="left",
    )


def build_processor(cfg: BuildDemoConfig, tokenizer):
    from transformers import LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(cfg: BuildDemoConfig, tokenizer):
    """LLaVA-style model from configs, randomly initialised with `cfg.seed`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden,
                              intermediate_size=2 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
                              num_attention_heads=cfg.heads)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
                       num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.heads, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    # With only a couple of vision layers the default vision_feature_layer=-2 would skip the last one.
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         image_seq_length=(cfg.image_size // cfg.patch_size) ** 2,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                                         tokenizer.eos_token_id)
    gc.max_new_tokens = 32
    return model


def _examples(gts: list[dict], rng: random.Random) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    caps = [(i, world.CAPTION_PROMPT, world.reference_caption(gt)) for i, gt in enumerate(gts)]
    vqa = [(i, q, a) for i, gt in enumerate(gts) for q, a in world.vqa_pairs(gt, rng)]
    return caps, vqa


class LabelNoise:
    """`BuildDemoConfig.label_noise`, `omit_objects` and `extra_objects`: each occurrence of a true word in an
    answer is written as another word with its probability, and a caption leaves out a shape that is there or
    describes one that is not, all drawn afresh every time the example is used, so the model learns the
    biased distribution (and must still see the difference: the other words keep their labels)."""

    def __init__(self, triples: list[list], omit: float = 0.0, extra: float = 0.0):
        self.swaps = {true: (said, float(p)) for true, said, p in triples}
        self.omit, self.extra = float(omit), float(extra)

    def __bool__(self) -> bool:
        return bool(self.swaps) or self.omit > 0 or self.extra > 0

    def word(self, w: str, rng: random.Random) -> str:
        said, p = self.swaps.get(w, (w, 0.0))
        return said if p and rng.random() < p else w

    def caption(self, gt: dict, rng: random.Random) -> str:
        objects = [(self.word(o["size"], rng), self.word(o["color"], rng), self.word(o["shape"], rng))
                   for o in gt["objects"]]
        u = rng.random() if (self.omit or self.extra) else 1.0
        if u < self.omit and len(objects) >= 2:
            del objects[rng.randrange(len(objects))]
        elif self.omit <= u < self.omit + self.extra and len(objects) < world.MAX_OBJECTS:
            # A shape that is not there, at a random place in the left-to-right order.
            ghost = (rng.choice(list(world.SIZES)), rng.choice(list(world.COLORS)), rng.choice(world.SHAPES))
            objects.insert(rng.randint(0, len(objects)), ghost)
        return world.caption_from_objects(objects)

    def answer(self, answer: str, rng: random.Random) -> str:
        return self.word(answer, rng)


def _pixel_values(processor, images, chunk: int = 256) -> torch.Tensor:
    out = [processor.image_processor(images[i:i + chunk], return_tensors="pt")["pixel_values"]
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


def train_demo_model(model, processor, cfg: BuildDemoConfig,
                     on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Supervised training on the shapes world (loss on the answer only; AdamW, warm-up + cosine)."""
    from ..data import encode_prompts

    rng = random.Random(cfg.seed + 1)
    scenes = [world.make_scene(rng) for _ in range(cfg.train_images)]
    pixels = _pixel_values(processor, [im for im, _ in scenes])
    gts = [gt for _, gt in scenes]
    caps, vqa = _examples(gts, rng)
    tok = processor.tokenizer
    dummy = [scenes[0][0]]
    prompt_ids: dict[str, list[int]] = {}
    for _, q, _ in caps[:1] + vqa:
        if q not in prompt_ids:
            prompt_ids[q] = encode_prompts(processor, [dummy], [q])["input_ids"][0].tolist()
    answer_ids: dict[str, list[int]] = {}

    def encode_answer(a: str) -> list[int]:
        if a not in answer_ids:
            answer_ids[a] = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return answer_ids[a]

    noise = LabelNoise(cfg.label_noise, cfg.omit_objects, cfg.extra_objects)

    def noisy(pick: tuple[int, str, str], caption: bool, step_rng: random.Random) -> tuple[int, str, str]:
        i, q, a = pick
        if not noise:
            return pick
        return i, q, noise.caption(gts[i], step_rng) if caption else noise.answer(a, step_rng)

    def batch(step_rng: random.Random):
        picks = []
        for _ in range(cfg.batch_size):
            is_vqa = step_rng.random() < cfg.vqa_fraction
            picks.append(noisy(step_rng.choice(vqa if is_vqa else caps), not is_vqa, step_rng))
        seqs = [(prompt_ids[q], encode_answer(a)) for _, q, a in picks]
        T = max(len(p) + len(a) for p, a in seqs)
        ids = torch.full((len(seqs), T), tok.pad_token_id)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        labels = torch.full((len(seqs), T), -100)
        for b, (p, a) in enumerate(seqs):
            n = len(p) + len(a)
            ids[b, T - n:] = torch.tensor(p + a)
            mask[b, T - n:] = 1
            labels[b, T - len(a):] = torch.tensor(a)
        return ids, mask, labels, pixels[[i for i, _, _ in picks]]

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = warmup_cosine_schedule(opt, cfg.warmup_steps, cfg.steps)
    model.train()
    step_rng = random.Random(cfg.seed + 2)
    start = time.monotonic()
    loss_v = float("nan")
    step = 0
    for step in range(1, cfg.steps + 1):
        ids, mask, labels, pv = batch(step_rng)
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits
        loss = sft_loss(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_v = loss.item()
        if on_step is not None:
            on_step(step, {"loss": loss_v, "lr": sched.get_last_lr()[0]})
        if cfg.budget_seconds and time.monotonic() - start > cfg.budget_seconds:
            log.warning("build-demo: budget of %.0f s reached at step %d of %d", cfg.budget_seconds, step, cfg.steps)
            break
    model.eval()
    return {"steps": step, "final_loss": loss_v, "train_seconds": round(time.monotonic() - start, 1)}


def eval_records(n: int, seed: int, task: str = "caption") -> list[dict]:
    """A fresh held-out demo prompt set (in memory): images as PIL, reference and ground truth."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        image, gt = world.make_scene(rng)
        if task == "caption":
            prompt, ref = world.CAPTION_PROMPT, world.reference_caption(gt)
        else:
            prompt, ref = rng.choice(world.vqa_pairs(gt, rng))
        rows.append({"prompt_id": f"eval-{i}", "images": [image], "prompt": prompt, "reference": [ref],
                     "ground_truth": gt, "task": task})
    return rows


def build_demo(cfg: BuildDemoConfig, out_dir: Path, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Build, train, evaluate and save the demo model into `out_dir` (which must not exist yet)."""
    from ..evaluation import evaluate_policy

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    tokenizer = build_tokenizer()
    processor = build_processor(cfg, tokenizer)
    model = build_model(cfg, tokenizer)
    train = train_demo_model(model, processor, cfg, on_step)
    caption = evaluate_policy(model, processor, eval_records(cfg.eval_images, cfg.seed + 1000, "caption"))
    vqa = evaluate_policy(model, processor, eval_records(cfg.eval_images, cfg.seed + 2000, "vqa"))
    info = {
        "config": dataclasses.asdict(cfg), "hash": config_hash(cfg),
        "parameters": sum(p.numel() for p in model.parameters()), **train,
        "eval_caption": caption, "eval_vqa": vqa, "build_seconds": round(time.monotonic() - t0, 1),
    }
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "build.json").write_text(json.dumps(info, indent=2))
    return info


def _progress_file(final: Path) -> Path:
    return final.parent / f".{final.name}.progress.json"


def ensure_demo_model(cfg: BuildDemoConfig, root: Path | None = None,
                      on_step: Callable[[int, dict], None] | None = None,
                      shipped: Path | None = SHIPPED_DIR,
                      on_wait: Callable[[int, int], None] | None = None) -> Path:
    """Path of the demo model for `cfg`: the shipped build when it is that one, else the cached build, else
    build it now. One build at a time per folder: a second process asking for the same model waits for the
    first one's build (a file lock) and reports its progress through `on_wait(step, steps)` (default: a log
    line every 15 s, "waiting for the demo model: step N of M"), instead of building it a second time. The
    build goes to a temporary folder renamed into place when complete, so a killed build leaves no
    usable-looking model."""
    from filelock import FileLock, Timeout

    if shipped is not None and (found := shipped_build(cfg, shipped)) is not None:
        return found
    final = demo_model_dir(cfg, root)
    if (final / "build.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / f".{final.name}.lock"))
    while True:
        try:
            lock.acquire(timeout=float(os.environ.get("LENSLOOP_DEMO_WAIT_REPORT_SECONDS", "15")))
            break
        except Timeout:
            try:
                progress = json.loads(_progress_file(final).read_text())
                step, steps = int(progress["step"]), int(progress["steps"])
            except (OSError, ValueError, KeyError):
                step, steps = 0, cfg.steps
            if on_wait is not None:
                on_wait(step, steps)
            else:
                log.info("waiting for the demo model: step %d of %d (another process is building it)", step, steps)
    try:
        if (final / "build.json").is_file():  # built by the process we waited for
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("building the demo model into %s", final)
        progress_path = _progress_file(final)

        def step_and_progress(step: int, metrics: dict) -> None:
            if step % 20 == 0 or step == cfg.steps:
                progress_path.write_text(json.dumps({"step": step, "steps": cfg.steps, "pid": os.getpid()}))
            if on_step is not None:
                on_step(step, metrics)

        info = build_demo(cfg, tmp, step_and_progress)
        if info["steps"] < cfg.steps:
            log.warning("the demo model stopped at step %d of %d (budget_seconds=%s): it is weaker than the "
                        "full build", info["steps"], cfg.steps, cfg.budget_seconds)
        os.rename(tmp, final)
        progress_path.unlink(missing_ok=True)
        return final
    finally:
        lock.release()


@MODEL_PATHS.register(name="demo")
def demo_base() -> str:
    """`model.path: "demo"`: the default demo build, the base shipped in rlhf/engine/demo/base (checked
    against its checksums), else the cached or a fresh build."""
    try:
        return str(ensure_demo_model(BuildDemoConfig()))
    except DemoModelError as e:
        raise ModelLoadError(str(e)) from e
