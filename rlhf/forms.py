"""Forms of the training pages: they validate input; the views hand it to ``rlhf.services``."""

from __future__ import annotations

from django import forms

from rlhf.engine import round as round_schema
from rlhf.models import LoopSettings
from rlhf.services import ROUND_DEFAULTS

CUDA_HELP = "Needs a CUDA GPU on the training workers (set LENSLOOP_WORKERS_HAVE_CUDA=1 where they have one)."


def form_field(f) -> forms.Field:
    """The form field of a round parameter, from its type, label, help and bounds in the round schema."""
    meta, hint = f.metadata, round_schema.hint(f.name)
    common = {"label": meta.get("label"), "help_text": meta["help"]}
    if "choices" in meta:
        return forms.ChoiceField(choices=list(meta["choices"].items()), **common)
    if hint is bool:
        return forms.BooleanField(required=False, **common)
    bounds = {"min_value": meta.get("min"), "max_value": meta.get("max")}
    if hint is int:
        return forms.IntegerField(**bounds, **common)
    return forms.FloatField(**bounds, **common)


class RoundForm(forms.Form):
    """The launch page's round parameters (``rlhf.engine.round.RoundConfig``, groups main, algorithm and
    more), defaults filled in; every field derived from the schema."""

    def __init__(self, *args, cuda: bool, defaults: dict | None = None, **kwargs):
        kwargs.setdefault("initial", {**ROUND_DEFAULTS, **(defaults or {})})
        super().__init__(*args, **kwargs)
        if not cuda:
            # Disabled fields ignore what is posted, so QLoRA cannot be switched on without CUDA.
            self.fields["qlora"].disabled = True
            self.fields["qlora"].initial = False
            self.fields["qlora"].help_text = CUDA_HELP
        by_group = {g: [self[f.name] for f in round_schema.fields(g)] for g in (round_schema.MAIN, round_schema.ALGORITHM,
                                                                             round_schema.MORE)}
        self.main_fields = [b for b in by_group[round_schema.MAIN] if b.name != "algorithm"]
        self.algorithm_fields = by_group[round_schema.ALGORITHM]
        self.more_fields = by_group[round_schema.MORE]

    def more_open(self) -> bool:
        """Show the folded settings when one of them has an error."""
        return any(field.errors for field in self.more_fields)

    def params(self) -> dict:
        """The cleaned parameters, as ``start_round(params=...)`` takes them."""
        return {name: self.cleaned_data[name] for name in ROUND_DEFAULTS}


RoundForm.base_fields = {name: form_field(f) for name, f in ((f.name, f) for f in round_schema.fields())
                         if name in ROUND_DEFAULTS}
RoundForm.declared_fields = RoundForm.base_fields


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
