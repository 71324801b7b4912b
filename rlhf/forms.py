"""Forms of the training pages: they validate input; the views hand it to ``rlhf.services``."""

from __future__ import annotations

from django import forms

from rlhf.models import LoopSettings
from rlhf.services import ALGORITHMS, ROUND_DEFAULTS

ALGORITHM_CHOICES = [
    ("ppo", "PPO: reward model, then policy optimisation against it (default)"),
    ("grpo", "GRPO: group-relative policy optimisation against the reward model"),
    ("dpo", "DPO: optimise directly on the preference pairs"),
    ("sft", "SFT: fine-tune on the answers ranked first"),
]
assert {name for name, _ in ALGORITHM_CHOICES} == set(ALGORITHMS), "algorithms changed; update ALGORITHM_CHOICES"

CUDA_HELP = "Needs a CUDA GPU on the training workers (set LENSLOOP_WORKERS_HAVE_CUDA=1 where they have one)."


class RoundForm(forms.Form):
    """The parameters of a round (``rlhf.services.ROUND_DEFAULTS``), defaults filled in."""

    algorithm = forms.ChoiceField(choices=ALGORITHM_CHOICES)
    policy_steps = forms.IntegerField(
        min_value=1, max_value=1_000_000, label="Policy steps", help_text="Optimisation steps of the policy."
    )
    lr = forms.FloatField(min_value=0, label="Learning rate", help_text="0 = the engine's default for the algorithm.")
    lora_r = forms.IntegerField(min_value=1, max_value=256, label="LoRA rank", help_text="Rank of the adapter on q_proj and v_proj.")
    qlora = forms.BooleanField(
        required=False, label="QLoRA", help_text="Load the base weights in 4-bit (NF4) and train the LoRA adapter on top."
    )
    kl_coef = forms.FloatField(
        min_value=0, label="KL coefficient", help_text="PPO and GRPO: how hard the policy is held near the reference policy."
    )
    beta = forms.FloatField(min_value=0, label="DPO β", help_text="DPO: strength of the implicit KL constraint.")
    reward_epochs = forms.FloatField(min_value=0.1, label="Reward-model epochs", help_text="Passes over the preference pairs.")
    generate_prompts = forms.IntegerField(
        min_value=1, max_value=100_000, label="Prompts to sample",
        help_text="Afterwards the new policy answers this many prompts, K candidates each, as new ranking tasks.",
    )
    temperature = forms.FloatField(min_value=0.01, max_value=5, label="Sampling temperature")

    def __init__(self, *args, cuda: bool, defaults: dict | None = None, **kwargs):
        kwargs.setdefault("initial", {**ROUND_DEFAULTS, **(defaults or {})})
        super().__init__(*args, **kwargs)
        if not cuda:
            # Disabled fields ignore what is posted, so QLoRA cannot be switched on without CUDA.
            self.fields["qlora"].disabled = True
            self.fields["qlora"].initial = False
            self.fields["qlora"].help_text = CUDA_HELP
        self.main_fields = [self[name] for name in ("policy_steps", "lr", "lora_r", "qlora")]
        self.algorithm_fields = [self[name] for name in ("kl_coef", "beta")]
        self.more_fields = [self[name] for name in ("reward_epochs", "generate_prompts", "temperature")]

    def more_open(self) -> bool:
        """Show the folded settings when one of them has an error."""
        return any(field.errors for field in self.more_fields)

    def params(self) -> dict:
        """The cleaned parameters, as ``start_round(params=...)`` takes them."""
        return {name: self.cleaned_data[name] for name in ROUND_DEFAULTS}


assert set(RoundForm.base_fields) == set(ROUND_DEFAULTS), "round parameters changed; update RoundForm"


class GateSettingsForm(forms.ModelForm):
    """The held-out evaluation and the promotion gate (``rlhf.gate``); ``rlhf.services.loop_settings_set``
    saves them."""

    class Meta:
        model = LoopSettings
        fields = ["promotion_gate", "gate_reward", "gate_comparisons", "eval_prompts"]
        labels = {
            "promotion_gate": "Promotion gate",
            "gate_reward": "Verifiable reward",
            "gate_comparisons": "Side-by-side rankings",
            "eval_prompts": "Held-out prompts per evaluation",
        }
        widgets = {
            "gate_comparisons": forms.NumberInput(attrs={"min": 1, "step": 1}),
            "eval_prompts": forms.NumberInput(attrs={"min": 0, "step": 1}),
        }

    def __init__(self, *args, **kwargs):
        from rlhf.engine.rewards import REWARDS

        super().__init__(*args, **kwargs)
        self.fields["gate_reward"] = forms.ChoiceField(
            required=False, label="Verifiable reward",
            choices=[("", "The round's verifiable reward, if any")] + [(name, name) for name in sorted(REWARDS)],
            help_text=LoopSettings._meta.get_field("gate_reward").help_text,
        )


class LoopSettingsForm(forms.ModelForm):
    class Meta:
        model = LoopSettings
        fields = ["auto_round_pairs"]
        labels = {"auto_round_pairs": "Start a round every"}
        help_texts = {
            "auto_round_pairs": "new preference pairs (0 = off). Workers check every 20 s or so; "
            "never two rounds of a project at once."
        }
        widgets = {"auto_round_pairs": forms.NumberInput(attrs={"min": 0, "step": 1})}
