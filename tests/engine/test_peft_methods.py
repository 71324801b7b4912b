"""`model.peft_method`: each PEFT method the engine offers trains only its adapter (SFT steps, the reward model),
switches off to the base model exactly (the PPO / TRL reference), saves and reloads through the engine's load
path with the same outputs, and runs PPO, GRPO and DPO; 4-bit where PEFT allows it; the others are config
errors that say why and what to use."""

import json
import random

import pytest
import torch

from rlhf.engine.config import ConfigError, ModelConfig, load_config
from rlhf.engine.data import encode_completions
from rlhf.engine.demo import world
from rlhf.engine.loading import load_model

METHODS = ["lora", "dora", "ia3", "loha", "lokr", "adalora", "bottleneck_adapter", "prompt_tuning"]
# What every trainable parameter name of the method's adapter contains.
ADAPTER_WORD = {"lora": "lora_", "dora": "lora_", "ia3": "ia3_l", "loha": "hada_", "lokr": "lokr_",
                "adalora": "lora_", "bottleneck_adapter": "bottleneck_", "prompt_tuning": "prompt_encoder."}
PEFT_CONFIG = {"lora": "LoraConfig", "dora": "LoraConfig", "ia3": "IA3Config", "loha": "LoHaConfig",
               "lokr": "LoKrConfig", "adalora": "AdaLoraConfig", "bottleneck_adapter": "BottleneckConfig",
               "prompt_tuning": "PromptTuningConfig"}
PEFT_TYPE = {"lora": "LORA", "dora": "LORA", "ia3": "IA3", "loha": "LOHA", "lokr": "LOKR", "adalora": "ADALORA",
             "bottleneck_adapter": "BOTTLENECK_ADAPTER", "prompt_tuning": "PROMPT_TUNING"}  # as adapter_config.json names it


def _batch(processor, n=2, seed=0):
    rng = random.Random(seed)
    scenes = [world.make_scene(rng) for _ in range(n)]
    return encode_completions(processor, [[image] for image, _ in scenes], [world.CAPTION_PROMPT] * n,
                              [world.reference_caption(gt) for _, gt in scenes])


def _sft_steps(model, batch, steps=3, lr=1e-2):
    from rlhf.engine.losses import sft_loss
    from rlhf.engine.sft import completion_labels

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    labels = completion_labels(batch.inputs["input_ids"], batch.completion_mask)
    for _ in range(steps):
        loss = sft_loss(model(**batch.inputs).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss)


def _changed(model, before) -> list[str]:
    return [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]


@pytest.mark.parametrize("method", METHODS)
def test_sft_trains_only_the_adapter_which_switches_off_to_the_base_and_reloads(method, tiny_model,
                                                                                 tiny_model_path, tmp_path):
    base, _ = tiny_model
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", peft_method=method)
    cfg.validate()
    model, processor = load_model(cfg, trainable=True)
    assert type(model.peft_config["default"]).__name__ == PEFT_CONFIG[method]
    assert model.peft_config["default"].__dict__.get("use_dora", False) == (method == "dora")
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(ADAPTER_WORD[method] in n for n in trainable), sorted(trainable)
    assert method == "prompt_tuning" or all("language_model" in n for n in trainable)
    batch = _batch(processor)
    _sft_steps(model, batch)
    assert _changed(model, trainable)
    model.eval()
    with torch.no_grad():
        tuned = model(**batch.inputs).logits
        with model.disable_adapter():
            reference = model(**batch.inputs).logits
        plain = base(**batch.inputs).logits
    assert torch.allclose(reference, plain, atol=1e-6), "the adapter-disabled model is the base model"
    assert not torch.allclose(tuned, plain, atol=1e-4)
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu", adapter_path=str(tmp_path / "adapter")))
    assert type(again.peft_config["default"]).__name__ == PEFT_CONFIG[method]
    with torch.no_grad():
        assert torch.allclose(again(**batch.inputs).logits, tuned, atol=1e-5)


def test_ia3_scales_the_input_of_the_feed_forward_targets_and_the_output_of_the_others(tiny_model_path):
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", peft_method="ia3",
                      lora_target_modules=["q_proj", "v_proj", "down_proj"])
    model, _ = load_model(cfg, trainable=True)
    layers = {n.rsplit(".", 1)[-1]: m.is_feedforward for n, m in model.named_modules() if hasattr(m, "is_feedforward")}
    assert layers == {"q_proj": False, "v_proj": False, "down_proj": True}


@pytest.mark.parametrize("method", METHODS[1:])
def test_the_reward_model_trains_its_adapter_and_reloads_with_the_same_scores(method, tiny_model_path, tmp_path):
    from rlhf.engine.reward_model import init_reward_model, load_reward_model, save_reward_model, score

    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", peft_method=method)
    rm, processor = init_reward_model(cfg, seed=0)
    adapter = {n: p.detach().clone() for n, p in rm.backbone.named_parameters() if p.requires_grad}
    assert adapter and all(ADAPTER_WORD[method] in n for n in adapter)
    batch = _batch(processor, n=4, seed=1)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        r = rm(completion_mask=batch.completion_mask, **batch.inputs)
        loss = -torch.nn.functional.logsigmoid(r[0::2] - r[1::2]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert _changed(rm.backbone, adapter)
    rm.eval()
    rng = random.Random(2)
    scenes = [world.make_scene(rng) for _ in range(3)]
    args = ([[im] for im, _ in scenes], [world.CAPTION_PROMPT] * 3, [world.reference_caption(gt) for _, gt in scenes])
    before = score(rm, processor, *args)
    save_reward_model(rm, processor, cfg, tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "reward_model.json").read_text())["model"]["peft_method"] == method
    rm2, processor2 = load_reward_model(tmp_path / "rm", device="cpu")
    assert torch.allclose(score(rm2, processor2, *args), before, atol=1e-5)


@pytest.mark.parametrize("method", ["dora", "ia3", "adalora", "bottleneck_adapter", "prompt_tuning"])
def test_methods_with_a_4bit_layer_train_on_4bit_weights(method, tiny_model_path):
    pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", qlora=True, peft_method=method)
    cfg.validate()
    model, processor = load_model(cfg, trainable=True)
    assert any("4bit" in type(m).__name__ for m in model.modules())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _sft_steps(model, _batch(processor), steps=1)
    changed = _changed(model, before)
    assert changed and all(ADAPTER_WORD[method] in n for n in changed)


@pytest.mark.parametrize(("method", "qlora"), [(m, False) for m in METHODS[1:]] + [("bottleneck_adapter", True)])
def test_ppo_grpo_and_dpo_runs_train_the_method_and_save_it(method, qlora, tiny_model_path, demo_dataset, tmp_path):
    from rlhf.engine.cli import main

    if qlora:
        pytest.importorskip("bitsandbytes")
    model = {"path": str(tiny_model_path), "device": "cpu", "peft_method": method, "qlora": qlora}
    ppo = {"model": model, "prompts_file": str(demo_dataset["prompts"]), "reward_model_path": "",
           "verifiable_reward": "demo_reward", "kl_coef": 0.05, "steps": 1, "seed": 3, "batch_size": 4,
           "eval_prompts": 4, "max_new_tokens": 8}
    dpo = {"model": model, "train_file": str(demo_dataset["preferences"]), "beta": 0.1, "steps": 1, "seed": 1,
           "batch_size": 4, "eval_pairs": 4}
    grpo = {**{k: v for k, v in ppo.items() if k != "kl_coef"}, "num_generations": 2, "beta": 0.05}
    for kind, data in (("ppo", ppo), ("grpo", grpo), ("dpo", dpo)):
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps(data))
        assert main([kind, "--config", str(path), "--run-dir", str(tmp_path / kind)]) == 0, kind
        ckpt = tmp_path / kind / "checkpoint"
        saved = json.loads((ckpt / "adapter_config.json").read_text())
        assert saved["peft_type"] == PEFT_TYPE[method], (kind, saved["peft_type"])
        assert saved.get("use_dora", False) == (method == "dora")
        policy, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu", adapter_path=str(ckpt)))
        assert type(policy.peft_config["default"]).__name__ == PEFT_CONFIG[method]  # as generate/evaluate load it


def test_bottleneck_adapters_start_as_the_identity_and_sit_where_the_placement_says(tiny_model, tiny_model_path):
    """Houlsby et al. 2019: the up-projection starts at zero, so before any step the adapted model is the base,
    bit for bit; each adapter has width / reduction_factor units after the chosen output projections."""
    base, _ = tiny_model
    width = base.config.text_config.hidden_size
    for placement, wrapped in (("both", {"o_proj", "down_proj"}), ("attention", {"o_proj"}), ("mlp", {"down_proj"})):
        cfg = ModelConfig(path=str(tiny_model_path), device="cpu", peft_method="bottleneck_adapter",
                          bottleneck_placement=placement, bottleneck_reduction_factor=8)
        cfg.validate()
        model, processor = load_model(cfg, trainable=True)
        adapted = {n: m for n, m in model.named_modules() if type(m).__name__ == "BottleneckLayer"}
        assert {n.rsplit(".", 1)[-1] for n in adapted} == wrapped and all("language_model" in n for n in adapted)
        assert len(adapted) == base.config.text_config.num_hidden_layers * len(wrapped)
        assert all(m.bottleneck_down["default"].out_features == width // 8 for m in adapted.values())
        trainable, _ = model.get_nb_trainable_parameters()
        assert trainable == len(adapted) * (2 * width * (width // 8) + width // 8 + width)
        batch = _batch(processor)
        with torch.no_grad():
            assert torch.equal(model(**batch.inputs).logits, base(**batch.inputs).logits), placement


def test_a_trained_bottleneck_adapter_switches_off_to_the_base_and_reloads_bit_for_bit(tiny_model, tiny_model_path,
                                                                                       tmp_path):
    """Disabled, each adapted module returns its base module's output untouched (not a zero added to it), and the
    saved folder is an ordinary PEFT adapter that the engine's load path restores exactly."""
    base, _ = tiny_model
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", peft_method="bottleneck_adapter",
                      bottleneck_reduction_factor=4)
    model, processor = load_model(cfg, trainable=True)
    batch = _batch(processor, n=3, seed=5)
    _sft_steps(model, batch, steps=4)
    model.eval()
    with torch.no_grad():
        tuned = model(**batch.inputs).logits
        with model.disable_adapter():
            assert torch.equal(model(**batch.inputs).logits, base(**batch.inputs).logits)
    assert not torch.allclose(tuned, base(**batch.inputs).logits, atol=1e-4)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK_ADAPTER" and saved["reduction_factor"] == 4
    again, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu", adapter_path=str(tmp_path / "adapter")))
    with torch.no_grad():
        assert torch.equal(again(**batch.inputs).logits, tuned)


def test_a_bottleneck_adapter_cannot_be_merged_into_the_weights(tiny_model_path):
    model, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu", peft_method="bottleneck_adapter"),
                          trainable=True)
    with pytest.raises(ValueError, match=r"non-linearity.*cannot be merged"):
        model.merge_and_unload()


def test_bottleneck_settings_are_checked():
    with pytest.raises(ConfigError, match=r"bottleneck_reduction_factor=0: must be at least 1"):
        ModelConfig(peft_method="bottleneck_adapter", bottleneck_reduction_factor=0).validate()
    with pytest.raises(ConfigError, match=r"bottleneck_placement='ffn': one of attention, mlp, both"):
        ModelConfig(peft_method="bottleneck_adapter", bottleneck_placement="ffn").validate()
    ModelConfig(peft_method="bottleneck_adapter", qlora=True).validate()  # it wraps a 4-bit layer's output
    from rlhf.engine.loading import ModelLoadError, peft_config

    # a language model whose feed-forward block ends in a name no placement knows: 'both' must not quietly
    # fall back to the attention adapters alone
    layer = torch.nn.ModuleDict({"self_attn": torch.nn.ModuleDict({"o_proj": torch.nn.Linear(8, 8)}),
                                 "mlp": torch.nn.ModuleDict({"w_out": torch.nn.Linear(8, 8)})})
    odd = torch.nn.ModuleDict({"language_model": torch.nn.ModuleList([layer])})
    with pytest.raises(ModelLoadError, match=r"bottleneck_placement='both': the mlp outputs \['down_proj', 'fc2'\]"):
        peft_config(odd, ModelConfig(peft_method="bottleneck_adapter"))
    assert peft_config(odd, ModelConfig(peft_method="bottleneck_adapter", bottleneck_placement="attention"))


def test_unknown_and_unsupported_methods_are_config_errors():
    with pytest.raises(ConfigError, match=r"peft_method='prefix'.*one of lora, dora, ia3"):
        ModelConfig(peft_method="prefix").validate()
    with pytest.raises(ConfigError, match=r"prompt_tuning_tokens=0: at least one virtual token"):
        ModelConfig(peft_method="prompt_tuning", prompt_tuning_tokens=0).validate()
    with pytest.raises(ConfigError, match=r"lora_modules_to_save is not read by peft_method='prompt_tuning'"):
        ModelConfig(peft_method="prompt_tuning", lora_modules_to_save=["language_model.norm"]).validate()
    for method in ("loha", "lokr"):
        with pytest.raises(ConfigError, match=rf"'{method}' cannot train on 4-bit.*qlora=false"):
            ModelConfig(peft_method=method, qlora=True).validate()
    with pytest.raises(ConfigError, match=r"needs model\.lora=true"):
        ModelConfig(peft_method="dora", lora=False).validate()
    with pytest.raises(ConfigError, match="peft_method='ia4'"):
        load_config("sft", {"train_file": "x.jsonl", "model": {"peft_method": "ia4"}})


def test_adalora_moves_its_rank_budget_over_an_sft_run_and_a_grpo_run(tiny_model_path, demo_dataset, tmp_path):
    """The engine's loops run AdaLoRA's schedule (PEFT leaves it to the loop): by the end of a run the rank
    budget is pruned from init_r = 12 to target_r = 8 per matrix on average, and the saved adapter says which
    ranks it kept; the same in a TRL loop, through its callback."""
    from rlhf.engine.cli import main

    model = {"path": str(tiny_model_path), "device": "cpu", "peft_method": "adalora", "lora_r": 8}
    sft = {"model": model, "train_file": str(demo_dataset["prompts"]), "steps": 10, "batch_size": 2, "lr": 1e-2}
    grpo = {"model": model, "prompts_file": str(demo_dataset["prompts"]), "reward_model_path": "",
            "verifiable_reward": "demo_reward", "steps": 10, "seed": 3, "batch_size": 2, "num_generations": 2,
            "eval_prompts": 2, "max_new_tokens": 6, "beta": 0.0}
    for kind, data in (("sft", sft), ("grpo", grpo)):
        (tmp_path / f"{kind}.json").write_text(json.dumps(data))
        assert main([kind, "--config", str(tmp_path / f"{kind}.json"), "--run-dir", str(tmp_path / kind)]) == 0
        saved = json.loads((tmp_path / kind / "checkpoint" / "adapter_config.json").read_text())
        assert (saved["init_r"], saved["target_r"], saved["total_step"]) == (12, 8, 10), kind
        kept = [sum(mask) for mask in saved["rank_pattern"].values()]  # the schedule ran: ranks were pruned
        assert kept and min(kept) < 12 and sum(kept) <= 8 * len(kept) + 1, (kind, kept)
        policy, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu",
                                           adapter_path=str(tmp_path / kind / "checkpoint")))
        assert type(policy.peft_config["default"]).__name__ == "AdaLoraConfig"


def test_a_run_that_continues_an_adalora_adapter_keeps_its_ranks(tiny_model_path, demo_dataset, tmp_path):
    """A later round continues the policy's AdaLoRA adapter: loading it resizes each matrix to the ranks kept,
    but PEFT counts its starting budget before that resize (init_r per matrix), so its schedule would prune
    the kept ranks again, down to half at the end of the second run. The engine's schedule counts the
    budget from the loaded ranks: at the target already, it trains them all and prunes none."""
    from rlhf.engine.cli import main

    model = {"path": str(tiny_model_path), "device": "cpu", "peft_method": "adalora", "lora_r": 8}
    first = {"model": model, "train_file": str(demo_dataset["prompts"]), "steps": 10, "batch_size": 2, "lr": 1e-2}
    second = {**first, "model": {**model, "adapter_path": str(tmp_path / "first" / "checkpoint")}}
    for name, data in (("first", first), ("second", second)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        assert main(["sft", "--config", str(tmp_path / f"{name}.json"), "--run-dir", str(tmp_path / name)]) == 0
    saved = {name: json.loads((tmp_path / name / "checkpoint" / "adapter_config.json").read_text())["rank_pattern"]
             for name in ("first", "second")}
    kept = sum(sum(mask) for mask in saved["first"].values())
    assert kept <= 8 * len(saved["first"]) + 1 and saved["second"] == saved["first"]
    ranks = {}
    for name in ("first", "second"):
        policy, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu",
                                           adapter_path=str(tmp_path / name / "checkpoint")))
        ranks[name] = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_E" in n}
    assert sum(p.shape[0] for p in ranks["second"].values()) == kept  # every kept rank is still there
    assert any(not torch.equal(ranks["first"][n], ranks["second"][n]) for n in ranks["first"])  # and trained


def _prompt_tuned(tiny_model_path, **options):
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", peft_method="prompt_tuning", **options)
    cfg.validate()
    return load_model(cfg, trainable=True)


def _check_samples_match_the_training_pass(model, processor):
    """Greedy answers are the argmax of the training forward pass over prompt + answer at every answer token,
    and sampled answers carry the log-probabilities that pass gives (PPO's ratio starts at one), for a batch
    whose prompts differ in length (left padding)."""
    from rlhf.engine.generation import sample
    from rlhf.engine.ops import gather_token_logprobs
    from rlhf.engine.ppo import join_prompt_and_answer

    rng = random.Random(3)
    images = [[world.make_scene(rng)[0]] for _ in range(3)]
    prompts = [world.CAPTION_PROMPT, "How many shapes are there in this image, and which?", world.CAPTION_PROMPT]
    for do_sample in (False, True):
        torch.manual_seed(0)
        ro = sample(model, processor, images, prompts, do_sample=do_sample, max_new_tokens=12)
        assert int(ro.prompt_inputs["attention_mask"].eq(0).sum()) > 0  # some rows are left-padded
        inputs = join_prompt_and_answer(ro.prompt_inputs, ro.completion_ids, ro.completion_mask, processor)
        L = ro.completion_ids.shape[1]
        with torch.no_grad():
            logits = model(**inputs).logits[:, -L - 1:-1]
        mask = ro.completion_mask.bool()
        if not do_sample:
            assert torch.equal(logits.argmax(-1)[mask], ro.completion_ids[mask]), ro.texts
        logprobs = gather_token_logprobs(logits.float(), ro.completion_ids) * ro.completion_mask
        torch.testing.assert_close(logprobs, ro.token_logprobs * ro.completion_mask, atol=1e-4, rtol=1e-4)
    return ro.texts


def test_prompt_tuning_generates_what_its_training_pass_scores_also_after_reloading(tiny_model_path, tmp_path):
    """PEFT 0.21 under transformers 5 prepends the virtual tokens again at every cached decoding step (the
    answers drift from the second token on); the engine's own generation input keeps them once, at the start.
    The forward pass's outputs are cut to the input ids' positions, which every loss reads."""
    model, processor = _prompt_tuned(tiny_model_path, prompt_tuning_tokens=6)
    batch = _batch(processor, n=4, seed=7)
    _sft_steps(model, batch, steps=5, lr=5e-2)  # moves the virtual tokens well away from their start
    model.eval()
    with torch.no_grad():
        out = model(**batch.inputs, output_hidden_states=True)
    assert out.logits.shape[1] == batch.inputs["input_ids"].shape[1]
    assert all(h.shape[1] == batch.inputs["input_ids"].shape[1] for h in out.hidden_states)
    texts = _check_samples_match_the_training_pass(model, processor)
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["num_virtual_tokens"] == 6
    again, processor = load_model(ModelConfig(path=str(tiny_model_path), device="cpu",
                                              adapter_path=str(tmp_path / "adapter")))
    assert _check_samples_match_the_training_pass(again, processor) == texts


def test_prompt_tuning_starts_from_ordinary_words_and_refuses_families_it_cannot_train(tiny_model_path):
    model, processor = _prompt_tuned(tiny_model_path, prompt_tuning_tokens=16)
    words = model.word_embeddings.weight
    virtual = model.prompt_encoder["default"].embedding.weight
    assert virtual.shape == (16, words.shape[1]) and virtual.requires_grad
    ids = [int((words - v).abs().sum(-1).argmin()) for v in virtual]
    assert all(torch.equal(words[i], v) for i, v in zip(ids, virtual, strict=True))  # each one a word's embedding
    tok = processor.tokenizer
    assert not set(ids) & (set(tok.all_special_ids) | set(tok.added_tokens_decoder)), ids  # never <image>, BOS, pad
    from rlhf.engine.loading import ModelLoadError, peft_config

    base, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu"))
    base.config.model_type = "qwen2_vl"
    with pytest.raises(ModelLoadError, match=r"cannot train a 'qwen2_vl' model: it computes its 3-D rotary positions"
                                             r".*use 'lora'"):
        peft_config(base, ModelConfig(peft_method="prompt_tuning"))
