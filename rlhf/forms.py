"""Forms of the training pages: they validate input; the views hand it to ``rlhf.services``."""

from __future__ import annotations

import json
import re

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


class RewardEditor:
    """The Training page's editor of a project's composed reward (``round_params["reward"]``,
    ``rlhf.engine.reward_terms``): one row per term, ``term-reward`` (a known name, or ``custom`` with a
    dotted path in ``term-custom``), ``term-weight`` and ``term-params`` (JSON). Rows repeat the same input
    names, so adding a row is copying one; rows with no reward are skipped. The terms themselves are
    checked by ``rlhf.services.loop_settings_set`` (the engine's rules, and the dry run of every term)."""

    CUSTOM = "custom"

    def __init__(self, data=None, *, terms: list | None = None):
        from rlhf.engine.reward_terms import describe_builtins, known_names

        self.names = known_names()
        self.builtins = describe_builtins()
        self.errors: list[str] = []
        self.row_errors: dict[int, str] = {}
        if data is None:
            self.rows = [self._row(t) for t in terms or []]
        else:
            self.rows = [{"reward": r, "custom": c, "weight": w, "params": p} for r, c, w, p in zip(
                data.getlist("term-reward"), data.getlist("term-custom"), data.getlist("term-weight"),
                data.getlist("term-params"), strict=False)]

    @property
    def examples(self) -> dict[str, str]:
        """A parameters example per built-in that takes parameters (the editor's placeholder)."""
        return {b["name"]: b["example"] for b in self.builtins if b["example"]}

    def _row(self, term) -> dict:
        known = term.reward in self.names
        return {"reward": term.reward if known else self.CUSTOM, "custom": "" if known else term.reward,
                "weight": f"{term.weight:g}", "params": json.dumps(term.params) if term.params else ""}

    def terms(self) -> list[dict] | None:
        """The rows as a reward spec, or None with ``row_errors`` set when a row cannot be read (params that
        are not JSON). Weights go through as typed when they are no number, so the engine's check names them."""
        spec, self.kept = [], []
        for i, row in enumerate(self.rows):
            name = (row["custom"] if row["reward"] == self.CUSTOM else row["reward"]).strip()
            if not name:
                if row["reward"] == self.CUSTOM:
                    self.row_errors[i] = "give the function's dotted path, package.module:function"
                continue
            term: dict = {"reward": name}
            weight = row["weight"].strip()
            try:
                term["weight"] = float(weight) if weight else 1.0
            except ValueError:
                term["weight"] = weight
            if row["params"].strip():
                try:
                    term["params"] = json.loads(row["params"])
                except json.JSONDecodeError as e:
                    self.row_errors[i] = f"params: not valid JSON ({e.msg} at column {e.colno})"
            spec.append(term)
            self.kept.append(i)
        return None if self.row_errors else spec

    def add_error(self, message: str) -> None:
        """An error of the checks: ``reward[i]…`` goes to the row it names, the rest above the rows."""
        m = re.match(r"reward\[(\d+)\]\.?(.*)", message)
        if m and int(m.group(1)) < len(self.kept):
            self.row_errors[self.kept[int(m.group(1))]] = m.group(2).lstrip(". ") or message
        else:
            self.errors.append(message)

    def display_rows(self) -> list[dict]:
        """The rows with their errors, and one empty row to add a term without JavaScript."""
        rows = [{**row, "error": self.row_errors.get(i, "")} for i, row in enumerate(self.rows)]
        return [*rows, {"reward": "", "custom": "", "weight": "1", "params": "", "error": ""}]
