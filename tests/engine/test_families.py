"""Every documented VLM family through every engine command, on tiny random-weight checkpoints built offline
(tests/engine/tiny_families.py), plus the semantics that break silently: a training forward pass gives the
log-probabilities `generate` sampled with, an answer token does not see the tokens after it, and LoRA lands
only in the language model.

The family table of docs/engine.md is this matrix (`EXPECTED`) rendered: a test keeps the two equal, and
`python -m tests.engine.test_families` rewrites the table.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.tiny_families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "engine.md"
COMMANDS = ("generate", "sft", "train-reward", "evaluate", "ppo", "grpo", "rloo", "dpo")
QLORA = ("sft", "ppo")  # also run with model.qlora: the 4-bit base (bitsandbytes runs on CPU too) under LoRA
NAMES = {"llava": "LLaVA", "llava_next": "LLaVA-Next", "llava_onevision": "LLaVA-OneVision", "qwen2_vl": "Qwen2-VL",
         "qwen2_5_vl": "Qwen2.5-VL", "idefics3": "Idefics3", "smolvlm": "SmolVLM", "paligemma": "PaliGemma",
         "gemma3": "Gemma 3"}
# Where TRL itself cannot train a family, the engine refuses at once with this message (and the alternative).
LIMITS = {("paligemma", "dpo"): "DPO through TRL 1.16 cannot train PaliGemma"}
COLUMNS = COMMANDS + tuple(f"{command} (QLoRA)" for command in QLORA)
EXPECTED = {(family, column): LIMITS.get((family, column), "works") for family in FAMILIES for column in COLUMNS}

pytestmark = pytest.mark.xdist_group("families")


@pytest.fixture(scope="session")
def families(tmp_path_factory) -> dict[str, Path]:
    from tests.engine.tiny_families import build_family

    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name) for name in FAMILIES}


@pytest.fixture(scope="session")
def family_data(tmp_path_factory) -> dict[str, Path]:
    from rlhf.engine.demo.annotators import write_demo_preferences

    return write_demo_preferences(tmp_path_factory.mktemp("family-data"), 12, seed=5, k=4)


def _config(command: str, model: dict, data: dict, run_root: Path) -> dict:
    prompts, train, held = str(data["prompts"]), str(data["preferences_train"]), str(data["preferences_eval"])
    rl = {"model": model, "prompts_file": prompts, "verifiable_reward": "demo_reward", "steps": 1, "max_new_tokens": 8,
          "eval_prompts": 2, "threads": 1}
    return {
        "generate": {"model": model, "prompts_file": prompts, "k": 2, "max_new_tokens": 8, "batch_size": 4,
                     "max_resample_rounds": 1},
        "sft": {"model": model, "train_file": prompts, "steps": 2, "batch_size": 4, "warmup_steps": 1, "log_every": 1},
        "train-reward": {"model": model, "train_file": train, "eval_file": held, "max_steps": 2, "batch_size": 4,
                         "eval_batch_size": 8, "warmup_steps": 1, "log_every": 1},
        # the reward model the train-reward cell trained: scores answers and is measured on held-out pairs
        "evaluate": {"model": model, "prompts_file": prompts, "verifiable_reward": "demo_reward", "samples": 1,
                     "bootstrap": 100, "max_new_tokens": 8, "batch_size": 4, "preference_file": held,
                     "reward_model_path": str(run_root / "train-reward" / "checkpoint"),
                     "answer_reward_model_path": str(run_root / "train-reward" / "checkpoint")},
        "ppo": {**rl, "batch_size": 4, "num_mini_batches": 1, "ppo_epochs": 1},
        "grpo": {**rl, "num_generations": 2, "batch_size": 4, "beta": 0.05},  # beta > 0: TRL's reference pass too
        "rloo": {**rl, "num_generations": 2, "batch_size": 4},
        "dpo": {"model": model, "train_file": train, "eval_file": held, "steps": 1, "batch_size": 2, "eval_pairs": 2,
                "threads": 1},
    }[command]


def _run(command: str, family: str, families, family_data, run_root: Path, qlora: bool = False) -> dict:
    from rlhf.engine.cli import main

    run_root.mkdir(parents=True, exist_ok=True)
    model = {"path": str(families[family]), "device": "cpu", "qlora": qlora}
    name = f"{command}-qlora" if qlora else command
    config = run_root / f"{name}.json"
    config.write_text(json.dumps(_config(command, model, family_data, run_root)))
    code = main([command, "--config", str(config), "--run-dir", str(run_root / name)])
    result = json.loads((run_root / name / "result.json").read_text())
    assert (code == 0) == (result["status"] == "completed"), result
    return result


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_engine_command_runs_on_the_family(family, families, family_data, tmp_path):
    runs = [(command, command, False) for command in COMMANDS] + [(f"{c} (QLoRA)", c, True) for c in QLORA]
    for column, command, qlora in runs:
        result = _run(command, family, families, family_data, tmp_path, qlora=qlora)
        expected = EXPECTED[(family, column)]
        if expected == "works":
            assert result["status"] == "completed", f"{family} {column}: {result.get('error', '')[-1500:]}"
        else:
            assert result["status"] == "failed" and expected in result["error"], (family, column, result)
    evaluated = json.loads((tmp_path / "evaluate" / "result.json").read_text())
    assert evaluated["reward_model/pairs"] > 0 and "policy/reward_model_score" in evaluated


def _load(families, family):
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.loading import load_model
    from rlhf.engine.rl_common import suppress_media_tokens

    model, processor = load_model(ModelConfig(path=str(families[family]), device="cpu", dtype="float32", lora=False),
                                  trainable=False)
    suppress_media_tokens(model, processor)  # as the engine's RL does: a random model would sample image tokens
    return model, processor


def _images(n):
    from PIL import Image

    return [[Image.new("RGB", (40 + 8 * i, 48), (200, 40 * i, 60))] for i in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_training_forward_pass_gives_the_log_probabilities_generate_sampled_with(family, families):
    """PPO's old/new/reference log-probs come from a forward pass over prompt + answer (the prompt's per-token
    tensors continued over the answer); they must be those of the distribution the answer was sampled from."""
    model, processor = _load(families, family)
    _check_sampled_logprobs(model, processor)


def _check_sampled_logprobs(model, processor, do_sample: bool = True) -> None:
    """Two prompts answered (sampled, or greedy): the training forward pass over prompt + answer gives the
    log-probabilities the answers were generated with."""
    from rlhf.engine.generation import sample
    from rlhf.engine.ops import gather_token_logprobs
    from rlhf.engine.ppo import join_prompt_and_answer

    torch.manual_seed(0)
    ro = sample(model, processor, _images(2), ["Describe the image.", "How many shapes are there?"],
                do_sample=do_sample, max_new_tokens=6)
    inputs = join_prompt_and_answer(ro.prompt_inputs, ro.completion_ids, ro.completion_mask, processor)
    L = ro.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(**inputs).logits[:, -L - 1:-1]
    logprobs = gather_token_logprobs(logits.float(), ro.completion_ids) * ro.completion_mask
    torch.testing.assert_close(logprobs, ro.token_logprobs * ro.completion_mask, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_with_two_images_sample_train_and_split_into_minibatches(family, families):
    """Two images in each prompt: the training forward pass reproduces the sampled log-probs, and a PPO
    minibatch of one row (its two images, or for Qwen2-VL their patches) gives that row's logits."""
    from PIL import Image

    from rlhf.engine.generation import sample
    from rlhf.engine.ops import gather_token_logprobs
    from rlhf.engine.ppo import join_prompt_and_answer, select_rows

    model, processor = _load(families, family)
    images = [[Image.new("RGB", (40, 48), (200, 0, 0)), Image.new("RGB", (56, 40), (0, 200, 0))],
              [Image.new("RGB", (48, 48), (0, 0, 200)), Image.new("RGB", (32, 64), (200, 200, 0))]]
    torch.manual_seed(0)
    ro = sample(model, processor, images, ["Compare the two images.", "Describe both."], max_new_tokens=5)
    inputs = join_prompt_and_answer(ro.prompt_inputs, ro.completion_ids, ro.completion_mask, processor)
    L = ro.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(**inputs).logits[:, -L - 1:-1]
        row = model(**select_rows(inputs, torch.tensor([1]), [2, 2])).logits[:, -L - 1:-1]
    logprobs = gather_token_logprobs(logits.float(), ro.completion_ids) * ro.completion_mask
    torch.testing.assert_close(logprobs, ro.token_logprobs * ro.completion_mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(row, logits[[1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_answer_token_does_not_see_the_tokens_after_it(family, families):
    """Two answers that differ only in their last word: every earlier answer token has the same log-prob.
    (PaliGemma's answer tokens in its bidirectional prefix block saw the words after them.)"""
    from rlhf.engine.data import encode_completions
    from rlhf.engine.ops import gather_token_logprobs

    model, processor = _load(families, family)
    answers = ["one shape: a large red square.", "one shape: a large red circle."]
    batch = encode_completions(processor, _images(1) * 2, ["Describe the image."] * 2, answers)
    with torch.no_grad():
        logits = model(**batch.inputs).logits[:, :-1]
    logprobs = gather_token_logprobs(logits.float(), batch.inputs["input_ids"][:, 1:])
    mask = batch.completion_mask[:, 1:].bool()
    first, second = logprobs[0][mask[0]], logprobs[1][mask[1]]
    assert first.shape == second.shape
    n_same = len(processor.tokenizer(answers[0], add_special_tokens=False)["input_ids"]) - 2  # before "square"
    torch.testing.assert_close(first[:n_same], second[:n_same], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gemma3", "idefics3", "llava"])
def test_a_prompt_starts_with_one_bos_whoever_writes_it(family, families):
    """Gemma 3's and Idefics3's chat templates write BOS themselves; the tokenizer must not add another."""
    from rlhf.engine.data import encode_prompts

    _, processor = _load(families, family)
    bos = processor.tokenizer.bos_token_id
    ids = encode_prompts(processor, _images(2), ["Describe the image.", "Describe it."])["input_ids"]
    for row in ids.tolist():
        tokens = [t for t in row if t != processor.tokenizer.pad_token_id]
        assert tokens.count(bos) <= 1 and (bos is None or tokens[:2] != [bos, bos]), row


def test_a_missing_package_of_a_processor_is_named(families, monkeypatch):
    import transformers

    from rlhf.engine.loading import ModelLoadError, load_processor

    def missing(*args, **kwargs):
        raise ImportError("SmolVLMProcessor requires the num2words library but it was not found in your environment")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", missing)
    with pytest.raises(ModelLoadError, match=r"num2words.*install it"):
        load_processor(str(families["llava"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_lands_only_in_the_language_model_by_default(family, families):
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.loading import VISION_MODULE_WORDS, load_model

    model, _ = load_model(ModelConfig(path=str(families[family]), device="cpu"), trainable=True)
    adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A]
    assert adapted, "no LoRA module"
    assert all(re.search(r"\.(q_proj|v_proj)$", name) for name in adapted), adapted
    assert not [name for name in adapted if any(word in name for word in VISION_MODULE_WORDS)], adapted


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tuning_samples_what_its_training_pass_scores_or_is_refused(family, families):
    """Prompt tuning prepends virtual tokens the processor knows nothing of: on the families it is offered for,
    sampled answers carry the log-probabilities of the training forward pass (greedy ones are its argmax);
    the others (their positions or attention come from input ids or token types) are refused at load."""
    from rlhf.engine.config import ModelConfig
    from rlhf.engine.config_base import PROMPT_TUNING_FAMILIES
    from rlhf.engine.loading import ModelLoadError, load_model
    from rlhf.engine.rl_common import suppress_media_tokens

    cfg = ModelConfig(path=str(families[family]), device="cpu", dtype="float32", peft_method="prompt_tuning")
    if family not in PROMPT_TUNING_FAMILIES:
        with pytest.raises(ModelLoadError, match=rf"cannot train a '{family}' model: .*use 'lora'"):
            load_model(cfg, trainable=True)
        return
    model, processor = load_model(cfg, trainable=True)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(5)  # away from its start, so that it matters
    model.eval()
    suppress_media_tokens(model, processor)
    for do_sample in (False, True):
        _check_sampled_logprobs(model, processor, do_sample)


def render_table() -> str:
    """The family × command table of docs/engine.md, from EXPECTED."""
    head = "| family | " + " | ".join(f"`{c}`" if c in COMMANDS else f"`{c.split()[0]}` QLoRA" for c in COLUMNS) + " |"
    rows = [head, "|---|" + "---|" * len(COLUMNS)]
    for family in FAMILIES:
        cells = ["works" if EXPECTED[(family, c)] == "works" else "TRL limit ¹" for c in COLUMNS]
        rows.append(f"| {NAMES[family]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


BEGIN, END = "<!-- family table: python -m tests.engine.test_families -->", "<!-- end of family table -->"


def test_the_family_table_in_the_docs_is_the_test_matrix():
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} lacks the family table markers"
    assert text.split(BEGIN)[1].split(END)[0].strip() == render_table(), (
        "docs/engine.md's family table differs from tests/engine/test_families.py: run "
        "`.venv/bin/python -m tests.engine.test_families`")


if __name__ == "__main__":
    text = DOC.read_text()
    before, rest = text.split(BEGIN)
    DOC.write_text(before + BEGIN + "\n" + render_table() + "\n" + END + rest.split(END)[1])
    sys.stdout.write(f"wrote the family table into {DOC}\n")
