"""The offline demo: a synthetic shapes world (`world`) and a tiny VLM built and supervised on it (`build`)."""

# The policy's trainable parameters for RL on the demo model: the engine's default LoRA (q/v of the language
# model) plus `lm_head` trained in full (a copy saved with the adapter). The demo model's quick gain from RL
# is sharpening its answer distribution, and with q/v alone the final RMSNorm undoes any change of logit
# scale (docs/policy.md, "What RL can learn on the tiny demo model"). `lm_head` is a 64 × ~100 matrix here;
# on a real VLM it is hundreds of millions of parameters and the default targets are the usual choice.
DEMO_POLICY_LORA = {"lora_modules_to_save": ["lm_head"]}

# The quick, small build (about a minute on 2 cores; its captions are about half right) that the tests and the
# benchmarks' smoke runs use where the demo base's quality is not what they measure. Every field that shapes the
# model is pinned, so that changing the demo base's defaults never changes it; the tests ship it prebuilt in
# tests/assets/tiny-demo (`python -m rlhf.engine build-demo --config <these fields> --ship-to tests/assets/tiny-demo`).
TINY_BUILD = {"seed": 0, "image_size": 64, "patch_size": 16, "vision_hidden": 64, "vision_layers": 2, "text_hidden": 64,
              "text_layers": 2, "heads": 2, "steps": 800, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
              "vqa_fraction": 0.35, "train_images": 2000, "eval_images": 20, "budget_seconds": 0,
              "label_noise": [], "omit_objects": 0.0, "extra_objects": 0.0}
