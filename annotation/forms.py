"""Forms of the admin pages: they validate input; the views hand it to the services."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from annotation.models import Membership, Project
from annotation.services.exports import FORMATS
from annotation.services.projects import DEMO_MODEL, check_model_path, model_roots


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = [
            "name", "slug", "task_type", "candidates_per_task", "overlap", "lease_minutes", "instructions", "base_model",
            "heldout_fraction", "gold_rate", "gold_min_count", "gold_threshold", "gold_pause",
        ]
        widgets = {"instructions": forms.Textarea(attrs={"rows": 6})}
        labels = {"heldout_fraction": "Held-out fraction", "gold_rate": "Gold rate", "gold_min_count": "Gold tasks "
                  "before judging", "gold_threshold": "Gold accuracy threshold", "gold_pause": "Pause below threshold"}
        help_texts = {
            "slug": "Short name in URLs; leave empty to derive it from the name.",
            "heldout_fraction": "Share of imported prompts without a split kept out of training to evaluate "
            "each new policy on (0.1 = 10 %; chosen by hash, so the same on every import of the same data).",
        }

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["slug"].required = False
        for name in ("heldout_fraction", "gold_rate", "gold_min_count", "gold_threshold"):
            self.fields[name].required = False  # blank: the model's default (clean)
        roots = ", ".join(str(root) for root in model_roots())
        self.fields["base_model"].help_text = (
            f"Empty or '{DEMO_MODEL}' for the built-in demo model, else a model folder inside {roots or 'no folder yet'}."
        )

    def clean(self):
        """A number left blank takes the model's default."""
        data = super().clean()
        for name in ("heldout_fraction", "gold_rate", "gold_min_count", "gold_threshold"):
            if name in self.fields and data.get(name) is None and name not in self.errors:
                data[name] = Project._meta.get_field(name).default
        return data

    def clean_base_model(self):
        """Checked here when the form knows who sends it; ``project_create`` checks again either way."""
        value = self.cleaned_data["base_model"]
        if self.user is None or (self.instance.pk and value == self.instance.base_model):
            return value
        return check_model_path(value, user=self.user)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.ANNOTATOR)

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(f"There is no user called {username!r}; create the account in Django admin first.")
        self.cleaned_data["user"] = user
        return username


FORMAT_CHOICES = [
    ("records", "Preference records (JSONL + images, zip)"),
    ("trl", "TRL conversational preferences (JSONL + images, zip)"),
    ("parquet", "Parquet with image bytes, sharded (🤗 datasets; zip)"),
    ("hf", "🤗 datasets folder: load_from_disk, train and test splits (zip)"),
    ("rankings", "Raw rankings with ties, flags, rationales (JSONL + images, zip)"),
]
assert {name for name, _ in FORMAT_CHOICES} == set(FORMATS), "export formats changed; update FORMAT_CHOICES"


class ExportForm(forms.Form):
    """Mirrors the API's export query; the page's form submits straight to the streaming API endpoint."""

    format = forms.ChoiceField(choices=FORMAT_CHOICES, initial="records")
    since = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    source = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    split = forms.ChoiceField(
        required=False, initial="",
        choices=[("", "All prompts"), ("train", "Training prompts only"), ("eval", "Held-out prompts only")],
        help_text="Every line says its prompt's split; held-out prompts are never trained on by a round.",
    )
    min_confidence = forms.FloatField(
        required=False, min_value=0, max_value=1,
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0", "max": "1", "placeholder": "any"}),
        help_text="0–1: only pairs whose confidence (that chosen truly beats rejected) is at least this; "
                  "rankings: whose consensus is.",
    )
    min_annotator_reliability = forms.FloatField(
        required=False, min_value=0, max_value=1,
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0", "max": "1", "placeholder": "any"}),
        help_text="0–1: only the work of annotators at least this reliable (the probability they order a pair "
                  "correctly).",
    )

    def __init__(self, *args, sources: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["source"].choices = [(s, s) for s in sources]
