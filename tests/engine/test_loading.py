"""Model loading: the demo model through the ordinary path, LoRA targets, QLoRA, clear errors."""

import shutil

import pytest
import torch

from rlhf.engine.config import ModelConfig
from rlhf.engine.loading import ModelLoadError, count_parameters, load_model


def test_lora_by_default_targets_only_the_language_model(tiny_model_path):
    model, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu"), trainable=True)
    lora = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert lora and all("language_model" in n for n in lora)
    assert not any("vision" in n for n in lora)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 10


def test_lora_on_every_tower_when_asked(tiny_model_path):
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", lora_language_model_only=False)
    model, _ = load_model(cfg, trainable=True)
    assert any("vision" in n for n, _ in model.named_modules() if n.endswith("lora_A"))


def test_modules_to_save_are_trained_in_full_saved_with_the_adapter_and_off_in_the_reference(tiny_model_path, tmp_path):
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", lora_modules_to_save=["lm_head"])
    model, processor = load_model(cfg, trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head" in n and "modules_to_save" in n for n in trainable), sorted(trainable)
    ids = processor.tokenizer(["one shape"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = model(input_ids=ids).logits
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2.0)
        changed = model(input_ids=ids).logits
        with model.disable_adapter():
            reference = model(input_ids=ids).logits
    assert torch.allclose(changed, 2 * base, atol=1e-5) and torch.equal(reference, base)
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(ModelConfig(path=str(tiny_model_path), device="cpu", adapter_path=str(tmp_path / "adapter")))
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, changed, atol=1e-5)


def test_modules_to_save_that_match_nothing_are_refused(tiny_model_path):
    cfg = ModelConfig(path=str(tiny_model_path), device="cpu", lora_modules_to_save=["final_norm"])
    with pytest.raises(ModelLoadError, match="final_norm"):
        load_model(cfg, trainable=True)


def test_an_inference_load_freezes_everything(tiny_model):
    model, _ = tiny_model
    assert not any(p.requires_grad for p in model.parameters()) or not model.training


def test_a_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelConfig(path=str(tmp_path / "nothing-here")))


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(ModelConfig(path=str(tmp_path)))


def test_a_text_only_model_is_not_a_vlm(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelLoadError, match="not a vision-language model"):
        load_model(ModelConfig(path=str(tmp_path / "llama")))


def test_a_processor_that_disagrees_with_the_model_gets_a_hint(tiny_model_path, tmp_path):
    from transformers import AutoProcessor

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_path, bad)
    proc = AutoProcessor.from_pretrained(bad)
    proc.patch_size = 8  # expands each image to 4x the tokens the vision tower produces
    proc.save_pretrained(bad)
    with pytest.raises(ModelLoadError, match="processor and model disagree"):
        load_model(ModelConfig(path=str(bad), device="cpu"))


@pytest.mark.slow
def test_qlora_loads_in_4bit_and_takes_a_training_step_on_cpu(tiny_model_path):
    pytest.importorskip("bitsandbytes")
    from rlhf.engine.data import encode_completions
    from rlhf.engine.demo import world
    from rlhf.engine.losses import sft_loss
    from rlhf.engine.sft import completion_labels

    model, processor = load_model(ModelConfig(path=str(tiny_model_path), device="cpu", qlora=True), trainable=True)
    assert any("4bit" in type(m).__name__ for m in model.modules())
    import random

    image, gt = world.make_scene(random.Random(0))
    batch = encode_completions(processor, [[image]], [world.CAPTION_PROMPT], [world.reference_caption(gt)])
    # An eval-mode pass without gradients first (as generation does): on CPUs with AVX512-BF16,
    # bitsandbytes would switch the 4-bit layers to an inference-only kernel that cuts the gradients.
    model.eval()
    with torch.no_grad():
        model(**batch.inputs)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = sft_loss(model(**batch.inputs).logits, completion_labels(batch.inputs["input_ids"], batch.completion_mask))
    loss.backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert torch.isfinite(loss) and changed and all("lora" in n for n in changed)
