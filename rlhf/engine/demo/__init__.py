"""The offline demo: a synthetic shapes world (`world`) and a tiny VLM built and supervised on it (`build`)."""

# The policy's trainable parameters for RL on the demo model: the engine's default LoRA (q/v of the language
# model) plus `lm_head` trained in full (a copy saved with the adapter). The demo model's quick gain from RL
# is sharpening its answer distribution, and with q/v alone the final RMSNorm undoes any change of logit
# scale (docs/policy.md, "What RL can learn on the tiny demo model"). `lm_head` is a 64 × ~100 matrix here;
# on a real VLM it is hundreds of millions of parameters and the default targets are the usual choice.
DEMO_POLICY_LORA = {"lora_modules_to_save": ["lm_head"]}
