"""Tiny random-weight checkpoints of real VLM families, built offline in well under a second each.

`build_family(name, out_dir)` writes a `save_pretrained` folder (safetensors weights, config, generation
config, tokenizer, processor) that `AutoModelForImageTextToText.from_pretrained` and
`AutoProcessor.from_pretrained` load, so the engine's model-agnostic code (loading, prompt encoding,
sampling, the reward model, SFT/PPO/GRPO/RLOO/DPO) can be exercised on each family's own processor logic:
its image-token expansion, its special tokens, its chat template, its extra tensors (`image_grid_thw`,
`image_sizes`, `batch_num_images`, `pixel_attention_mask`, `token_type_ids`, `mm_token_type_ids`, ...).

Each checkpoint has
- a word-level tokenizer trained on the demo world's language (as `rlhf.engine.demo.build` builds the demo
  model's) plus the words of the family's chat template and the family's special tokens;
- the family's processor class with a small image size (32 px tiles, patch 8) consistent with the model
  config, and a chat template modelled on the real model's (PaliGemma as shipped has none: neither has
  this one);
- a model 32-64 wide with 2 layers per tower (a forward pass takes milliseconds), initialised after
  `torch.manual_seed(SEED)`, so that a build is deterministic.

The tokenizers add a BOS token where the real ones do (LLaVA's Llama, LLaVA-NeXT's Mistral, Idefics3's
Llama 3, PaliGemma's and Gemma 3's Gemma tokenizers; PaliGemmaProcessor turns it off), and the templates
write one where the real ones do (Idefics3, Gemma 3): a prompt rendered by the template and then tokenized
with special tokens starts with two, as with the real checkpoints.

Image processors: the `...Pil` classes are built (they need no torchvision); they save under the family's
plain `image_processor_type`, so AutoProcessor loads the torchvision-backed class where torchvision is
installed and the `...Pil` one where it is not.

torchvision. In transformers 5 the processors of the video-capable families (LLaVA-OneVision, Qwen2-VL,
Qwen2.5-VL, SmolVLM) always hold a video processor, and the video processors need torchvision. Without
torchvision such a processor can be neither constructed (`ProcessorMixin.__init__` raises
`AttributeError: type object 'VIDEO_PROCESSOR_MAPPING' has no attribute '_extra_content'`, also for
`video_processor=None`) nor loaded: `AutoProcessor.from_pretrained` raises
`ImportError: Qwen2VLVideoProcessor requires the Torchvision library but it was not found in your
environment.` (LlavaOnevisionVideoProcessor, SmolVLMVideoProcessor likewise). `build_family` then writes
the processor's files by hand (`processor_constructible` says when): the folder is complete and the model
loads, and its processor loads where torchvision is installed. SmolVLMProcessor also needs `num2words`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

SEED = 0
TILE = 32  # vision tower input side in pixels
PATCH = 8  # vision patch side: (TILE / PATCH)^2 = 16 patches per tile
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=1024)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3",
                             "smolvlm", "paligemma", "gemma3")


# ---- tokenizer -----------------------------------------------------------------------------------------


def _world_corpus(seed: int = 0) -> list[str]:
    """Sentences of the demo world: prompts, questions, captions and answers (as the demo build's corpus)."""
    from rlhf.engine.demo import world

    rng = random.Random(seed)
    texts = [world.CAPTION_PROMPT, *world.QUESTION_TEMPLATES.values(), "none yes no",
             "it is maybe i do not know left right [ ] 0 1 2 3 4 5 6 7 8 9",
             " ".join(world.COLORS), " ".join(world.SHAPES), " ".join(world.SIZES), " ".join(world.COUNT_WORDS),
             " ".join(s + "s" for s in world.SHAPES), "shape shapes"]
    for _ in range(100):
        _, gt = world.make_scene(rng, 64)
        texts.append(world.reference_caption(gt))
        texts += [f"{q} {a}" for q, a in world.vqa_pairs(gt, rng)]
    return texts


def _sample_conversations() -> list[list[dict]]:
    """Conversations rendered through a family's chat template to collect the template's own words."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image."}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "one shape: a small red circle."}]}
    system = {"role": "system", "content": [{"type": "text", "text": "be brief."}]}
    return [[user, answer], [system, user, answer]]


def _pre_tokenizer():
    from tokenizers import normalizers, pre_tokenizers

    return (pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]),
            normalizers.Lowercase())


def _words(texts: list[str], specials: list[str]) -> set[str]:
    pre, norm = _pre_tokenizer()
    out: set[str] = set()
    for text in texts:
        for s in specials:  # special tokens are matched before normalisation: never vocabulary words
            text = text.replace(s, " ")
        out.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return {w for w in out if "{" not in w and "}" not in w}


def _tokenizer(specials: list[str], words: set[str], *, chat_template: str | None, add_bos: bool,
               pad: str, eos: str, unk: str, bos: str | None, extra: dict[str, str]):
    """Word-level tokenizer (lower-cased, punctuation split off, as the demo model's): the special tokens
    first, then `words` in sorted order."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pre, norm = _pre_tokenizer()
    vocab = {t: i for i, t in enumerate(specials)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tk.normalizer = norm
    tk.pre_tokenizer = pre
    tk.decoder = decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":")])
    tk.add_special_tokens(specials)
    kwargs = dict(tokenizer_object=tk, pad_token=pad, unk_token=unk, eos_token=eos, extra_special_tokens=extra,
                  padding_side="left", add_bos_token=add_bos, add_eos_token=False)
    if bos is not None:
        kwargs["bos_token"] = bos
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    return PreTrainedTokenizerFast(**kwargs)


def build_tokenizer(spec: FamilySpec):
    """The family's tokenizer: world words + the words its chat template writes + its special tokens."""
    texts = _world_corpus() + spec.extra_text
    words = _words(texts, spec.specials)
    if spec.chat_template:
        draft = _tokenizer(spec.specials, words, chat_template=spec.chat_template, add_bos=False, pad=spec.pad,
                           eos=spec.eos, unk=spec.unk, bos=spec.bos, extra=spec.extra)
        rendered = [draft.apply_chat_template(c, tokenize=False, add_generation_prompt=g)
                    for c in _sample_conversations() for g in (False, True)]
        words |= _words(rendered, spec.specials)
    return _tokenizer(spec.specials, words, chat_template=spec.chat_template, add_bos=spec.add_bos, pad=spec.pad,
                      eos=spec.eos, unk=spec.unk, bos=spec.bos, extra=spec.extra)


# ---- chat templates (modelled on the real checkpoints') ------------------------------------------------

# llava-hf/llava-1.5-*-hf
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + (message['content'] if message['content'] is string "
    "else message['content'][0]['text']) + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ (message['content'] if message['content'] is string "
    "else message['content'][0]['text']) + eos_token }}"
    "{% endif %}{% endfor %}"
)

# llava-hf/llava-onevision-qwen2-*-ov-hf
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct (the same template)
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# HuggingFaceM4/Idefics3-8B-Llama3
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# HuggingFaceTB/SmolVLM-*-Instruct (transformers' SmolVLM DEFAULT_CHAT_TEMPLATE)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# google/gemma-3-*-it
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception('Invalid content type') }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


# ---- families ------------------------------------------------------------------------------------------


@dataclass
class FamilySpec:
    """A family's tokens and template; `build(tokenizer)` returns the processor's parts and the model maker."""

    specials: list[str]
    pad: str
    eos: str
    unk: str
    bos: str | None
    add_bos: bool
    chat_template: str | None
    build: Callable
    video: bool = False  # the processor has a video processor (needs torchvision)
    extra: dict[str, str] = field(default_factory=dict)
    extra_text: list[str] = field(default_factory=list)
    generation_eos: list[str] = field(default_factory=list)  # stop tokens besides tokenizer.eos_token


@dataclass
class Parts:
    """What a family builder makes: the processor's parts (put together by `build_family`, which writes by
    hand a processor it cannot construct) and the model maker, called after the processor exists."""

    processor_class: str
    image_processor: object
    make_model: Callable
    processor_kwargs: dict = field(default_factory=dict)
    video_processor: tuple[str, dict] | None = None  # (class name, kwargs): built only with torchvision


def _ids(tok, *names: str) -> list[int]:
    return [tok.convert_tokens_to_ids(n) for n in names]


def _clip(**kw):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=TILE, patch_size=PATCH, projection_dim=32, **VISION, **kw)


def _siglip(**kw):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(image_size=TILE, patch_size=PATCH, **VISION, **kw)


def _text_ids(tok) -> dict:
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)


def _llava(tok) -> Parts:
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.clip import CLIPImageProcessorPil

    def model():
        text = LlamaConfig(**TEXT, **_text_ids(tok), tie_word_embeddings=False)
        config = LlavaConfig(vision_config=_clip(), text_config=text, image_token_index=tok.image_token_id,
                             image_seq_length=(TILE // PATCH) ** 2, vision_feature_select_strategy="default",
                             vision_feature_layer=-2)
        return LlavaForConditionalGeneration(config)

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    return Parts("LlavaProcessor", image_processor, model,
                 dict(patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1))


PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]


def _llava_next(tok) -> Parts:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    def model():
        text = MistralConfig(**TEXT, **_text_ids(tok), sliding_window=None, tie_word_embeddings=False)
        config = LlavaNextConfig(vision_config=_clip(), text_config=text, image_token_index=tok.image_token_id,
                                 image_grid_pinpoints=PINPOINTS, image_seq_length=(TILE // PATCH) ** 2,
                                 vision_feature_select_strategy="default", vision_feature_layer=-2)
        return LlavaNextForConditionalGeneration(config)

    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                                 image_grid_pinpoints=PINPOINTS)
    return Parts("LlavaNextProcessor", image_processor, model,
                 dict(patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1))


def _llava_onevision(tok) -> Parts:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config
    from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

    def model():
        text = Qwen2Config(**TEXT, **_text_ids(tok), tie_word_embeddings=False)
        config = LlavaOnevisionConfig(vision_config=_siglip(vision_use_head=False), text_config=text,
                                      image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
                                      image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full",
                                      vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9")
        return LlavaOnevisionForConditionalGeneration(config)

    image_processor = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE},
                                                      image_grid_pinpoints=PINPOINTS)
    return Parts("LlavaOnevisionProcessor", image_processor, model,
                 dict(num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
                      vision_aspect_ratio="anyres_max_9", image_token="<image>", video_token="<video>"),
                 video_processor=("LlavaOnevisionVideoProcessor", dict(size={"height": TILE, "width": TILE})))


def _qwen2_text(tok) -> dict:
    # head_dim 32: the three multimodal rotary sections (time, height, width) add up to head_dim / 2
    return dict(**TEXT, **_text_ids(tok), rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                            "mrope_section": [4, 6, 6]})


# Every demo image (128 px) becomes TILE x TILE: 4 x 4 patches of 8 px, merged 2 x 2 into 4 image tokens.
_QWEN_PIXELS = dict(size={"shortest_edge": TILE * TILE, "longest_edge": TILE * TILE}, patch_size=PATCH,
                    temporal_patch_size=2, merge_size=2)


def _qwen_image_processor():
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**_QWEN_PIXELS)


def _qwen_special_ids(tok) -> dict:
    return dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def _qwen2_vl(tok) -> Parts:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    def model():
        vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2,
                      patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=_qwen2_text(tok), vision_config=vision, **_qwen_special_ids(tok),
                               tie_word_embeddings=False)
        return Qwen2VLForConditionalGeneration(config)

    return Parts("Qwen2VLProcessor", _qwen_image_processor(), model,
                 video_processor=("Qwen2VLVideoProcessor", dict(_QWEN_PIXELS)))


def _qwen2_5_vl(tok) -> Parts:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    def model():
        # window_size (pixels) / merge / patch = 2 merged tokens per window side; layer 1 attends to the whole image
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=2 * 2 * PATCH,
                      out_hidden_size=TEXT["hidden_size"], fullatt_block_indexes=[1])
        config = Qwen2_5_VLConfig(text_config=_qwen2_text(tok), vision_config=vision, **_qwen_special_ids(tok),
                                  tie_word_embeddings=False)
        return Qwen2_5_VLForConditionalGeneration(config)

    return Parts("Qwen2_5_VLProcessor", _qwen_image_processor(), model,
                 video_processor=("Qwen2VLVideoProcessor", dict(_QWEN_PIXELS)))


ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
IMAGE_SEQ_LEN_SCALED = (TILE // PATCH) ** 2 // 4  # Idefics3 / SmolVLM pixel shuffle, scale factor 2
# 128 px images → 64 px (longest edge) → split into 2 x 2 tiles of 32 px + one global 32 px image.
_SPLIT = dict(size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE}, do_image_splitting=True)


def _pixel_shuffle_family(tok, config_class, model_class, image_processor_class, processor: str, **extra) -> Parts:
    """Idefics3 and SmolVLM: a SigLIP-style tower, pixel shuffle (scale factor 2) and image splitting."""
    def model():
        from transformers import LlamaConfig

        text = LlamaConfig(**TEXT, **_text_ids(tok), tie_word_embeddings=False)
        config = config_class(vision_config=dict(image_size=TILE, patch_size=PATCH, **VISION), text_config=text,
                              image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
                              tie_word_embeddings=False)
        return model_class(config)

    return Parts(processor, image_processor_class(**_SPLIT), model, dict(image_seq_len=IMAGE_SEQ_LEN_SCALED), **extra)


def _idefics3(tok) -> Parts:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    return _pixel_shuffle_family(tok, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                                 "Idefics3Processor")


def _smolvlm(tok) -> Parts:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm import SmolVLMImageProcessorPil

    return _pixel_shuffle_family(tok, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
                                 "SmolVLMProcessor", video_processor=("SmolVLMVideoProcessor", dict(_SPLIT)))


def _gemma_text() -> dict:
    return dict(TEXT, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"])


def _paligemma(tok) -> Parts:
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration
    from transformers.models.siglip import SiglipImageProcessorPil

    # PaliGemmaProcessor adds <loc0000>…<loc1023> and <seg000>…<seg127> to the tokenizer: `model` runs after it.
    def model():
        text = GemmaConfig(**_gemma_text(), **_text_ids(tok))
        config = PaliGemmaConfig(vision_config=_siglip(vision_use_head=False), text_config=text,
                                 image_token_index=tok.image_token_id, vocab_size=len(tok),
                                 projection_dim=TEXT["hidden_size"], hidden_size=TEXT["hidden_size"])
        return PaliGemmaForConditionalGeneration(config)

    image_processor = SiglipImageProcessorPil(size={"height": TILE, "width": TILE})
    image_processor.image_seq_length = (TILE // PATCH) ** 2  # what PaliGemmaProcessor reads; saved with it
    return Parts("PaliGemmaProcessor", image_processor, model)


def _gemma3(tok) -> Parts:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig
    from transformers.models.gemma3 import Gemma3ImageProcessorPil

    mm_tokens = (TILE // PATCH) ** 2 // 4  # the projector average-pools 4 x 4 patches to 2 x 2 image tokens

    def model():
        text = Gemma3TextConfig(**_gemma_text(), **_text_ids(tok), query_pre_attn_scalar=_gemma_text()["head_dim"],
                                sliding_window=64, layer_types=["sliding_attention", "full_attention"])
        config = Gemma3Config(text_config=text, vision_config=_siglip(vision_use_head=False),
                              mm_tokens_per_image=mm_tokens, boi_token_index=tok.boi_token_id,
                              eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id)
        return Gemma3ForConditionalGeneration(config)

    image_processor = Gemma3ImageProcessorPil(size={"height": TILE, "width": TILE}, do_pan_and_scan=False)
    return Parts("Gemma3Processor", image_processor, model, dict(image_seq_length=mm_tokens))


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]
_QWEN_EXTRA = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", *ROW_COL]

SPECS: dict[str, FamilySpec] = {
    "llava": FamilySpec(["<unk>", "<s>", "</s>", "<pad>", "<image>"], pad="<pad>", eos="</s>", unk="<unk>",
                        bos="<s>", add_bos=True, chat_template=LLAVA_TEMPLATE, build=_llava,
                        extra={"image_token": "<image>"}),
    "llava_next": FamilySpec(["<unk>", "<s>", "</s>", "<pad>", "<image>"], pad="<pad>", eos="</s>", unk="<unk>",
                             bos="<s>", add_bos=True, chat_template=LLAVA_NEXT_TEMPLATE, build=_llava_next,
                             extra={"image_token": "<image>"}),
    "llava_onevision": FamilySpec(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<unk>"],
                                  pad="<|endoftext|>", eos="<|im_end|>", unk="<unk>", bos=None, add_bos=False,
                                  chat_template=LLAVA_ONEVISION_TEMPLATE, build=_llava_onevision, video=True,
                                  extra={"image_token": "<image>", "video_token": "<video>"},
                                  generation_eos=["<|endoftext|>"]),
    "qwen2_vl": FamilySpec(list(_QWEN_SPECIALS), pad="<|endoftext|>", eos="<|im_end|>", unk="<unk>", bos=None,
                           add_bos=False, chat_template=QWEN2_VL_TEMPLATE, build=_qwen2_vl, video=True,
                           extra=dict(_QWEN_EXTRA), generation_eos=["<|endoftext|>"]),
    "qwen2_5_vl": FamilySpec(list(_QWEN_SPECIALS), pad="<|endoftext|>", eos="<|im_end|>", unk="<unk>", bos=None,
                             add_bos=False, chat_template=QWEN2_VL_TEMPLATE, build=_qwen2_5_vl, video=True,
                             extra=dict(_QWEN_EXTRA), generation_eos=["<|endoftext|>"]),
    "idefics3": FamilySpec(["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<unk>", *_IDEFICS_SPECIALS],
                           pad="<pad>", eos="<end_of_utterance>", unk="<unk>", bos="<|begin_of_text|>", add_bos=True,
                           chat_template=IDEFICS3_TEMPLATE, build=_idefics3, extra={"image_token": "<image>"},
                           generation_eos=["<|end_of_text|>"]),
    "smolvlm": FamilySpec(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", *_IDEFICS_SPECIALS, "<video>"],
                          pad="<|im_end|>", eos="<end_of_utterance>", unk="<unk>", bos="<|im_start|>", add_bos=False,
                          chat_template=SMOLVLM_TEMPLATE, build=_smolvlm, video=True,
                          extra={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                 "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
                                 "video_token": "<video>"},
                          generation_eos=["<|im_end|>"]),
    "paligemma": FamilySpec(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], pad="<pad>", eos="<eos>", unk="<unk>",
                            bos="<bos>", add_bos=True, chat_template=None, build=_paligemma,
                            extra={"image_token": "<image>"}, extra_text=["caption en answer en"]),
    "gemma3": FamilySpec(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                          "<end_of_image>", "<image_soft_token>"], pad="<pad>", eos="<eos>", unk="<unk>", bos="<bos>",
                         add_bos=True, chat_template=GEMMA3_TEMPLATE, build=_gemma3,
                         extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                "eoi_token": "<end_of_image>"},
                         generation_eos=["<end_of_turn>"]),
}


def processor_constructible(name: str) -> tuple[bool, str]:
    """Whether this environment can construct (and so load) family `name`'s processor, and if not, why."""
    from transformers.utils import is_num2words_available, is_torchvision_available

    if SPECS[name].video and not is_torchvision_available():
        return False, ("its processor has a video processor, and the video processors need torchvision "
                       "(ProcessorMixin raises AttributeError: type object 'VIDEO_PROCESSOR_MAPPING' has no "
                       "attribute '_extra_content')")
    if name == "smolvlm" and not is_num2words_available():
        return False, "SmolVLMProcessor needs the num2words package (ImportError otherwise)"
    return True, ""


def _save_processor_by_hand(parts: Parts, tok, chat_template: str | None, out_dir: Path) -> None:
    """Write the files `processor.save_pretrained` would (processor_config.json with the image processor's
    settings and the video processor's non-default ones, tokenizer files, chat_template.jinja) without
    constructing the processor: for families whose processor this environment cannot construct."""
    image = parts.image_processor.to_dict()
    image["image_processor_type"] = image["image_processor_type"].removesuffix("Pil")
    video_class, video_kwargs = parts.video_processor
    config = {"image_processor": image, "video_processor": {**video_kwargs, "video_processor_type": video_class},
              **parts.processor_kwargs, "processor_class": parts.processor_class}
    tok._set_processor_class(parts.processor_class)
    tok.save_pretrained(out_dir)
    (out_dir / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if chat_template is not None:
        (out_dir / "chat_template.jinja").write_text(chat_template)


def build_family(name: str, out_dir: Path) -> Path:
    """Write the tiny checkpoint of family `name` (one of FAMILIES) into `out_dir` (created if missing) and
    return it. Deterministic: the same weights for the same seed and transformers version.

    Where the family's processor cannot be constructed here (`processor_constructible`: LLaVA-OneVision,
    Qwen2-VL, Qwen2.5-VL and SmolVLM without torchvision, SmolVLM without num2words), its files are written
    by hand: the folder is complete and its model loads, its processor loads where torchvision (and
    num2words) are installed."""
    import transformers

    if name not in SPECS:
        raise ValueError(f"unknown family {name!r}; one of {FAMILIES}")
    spec = SPECS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec)
    parts = spec.build(tok)
    processor = None
    if processor_constructible(name)[0]:
        kwargs = dict(parts.processor_kwargs)
        if parts.video_processor is not None:
            video_class, video_kwargs = parts.video_processor
            kwargs["video_processor"] = getattr(transformers, video_class)(**video_kwargs)
        processor = getattr(transformers, parts.processor_class)(
            image_processor=parts.image_processor, tokenizer=tok, chat_template=spec.chat_template, **kwargs)
    torch.manual_seed(SEED)
    model = parts.make_model()  # after the processor, which may add tokens (PaliGemma)
    model.eval()
    gc = model.generation_config
    eos = [tok.eos_token_id, *_ids(tok, *spec.generation_eos)]
    gc.pad_token_id, gc.bos_token_id = tok.pad_token_id, tok.bos_token_id
    gc.eos_token_id = eos[0] if len(eos) == 1 else eos
    gc.max_new_tokens = 32
    model.save_pretrained(out_dir, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(out_dir)
    else:
        _save_processor_by_hand(parts, tok, spec.chat_template, out_dir)
    return out_dir
