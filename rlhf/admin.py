"""The Django admin of the loop, for staff: runs and model versions to look at, changed only by actions
that call ``rlhf.services``.

A hand-edited ``state`` would leave a job running for a run marked finished (or the other way round), an
edited ``active`` would switch the policy under a running round without ``activate_version``'s checks,
and edited paths or configs would have the workers load any folder. So those fields are read-only, and
cancel, resume and "make active" are actions here, as on the Training pages.
"""

from django import forms
from django.contrib import admin, messages

from rlhf.forms import GateSettingsForm
from rlhf.models import LoopSettings, ModelVersion, TrainingRun
from rlhf.services import LoopError, activate_version, cancel_run, resume_round, validate_round_params


def _fields(model) -> list[str]:
    return [f.name for f in model._meta.get_fields() if f.concrete]


@admin.action(description="Cancel the selected runs (a running engine is killed)", permissions=["change"])
def cancel_runs(modeladmin, request, queryset):
    cancelled = [cancel_run(run) for run in queryset.filter(state__in=TrainingRun.ACTIVE_STATES)]
    modeladmin.message_user(request, f"{len(cancelled)} run(s) cancelled.", messages.SUCCESS)


@admin.action(description="Resume the selected rounds from their first unfinished step", permissions=["change"])
def resume_rounds(modeladmin, request, queryset):
    for run in queryset:
        try:
            resume_round(run)
        except LoopError as exc:
            modeladmin.message_user(request, f"{run}: {exc.message}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"{run} resumed.", messages.SUCCESS)


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "state", "round", "step", "total_steps", "created_at", "finished_at"]
    list_filter = ["project", "kind", "state"]
    actions = [cancel_runs, resume_rounds]

    def get_readonly_fields(self, request, obj=None):
        return _fields(TrainingRun)

    def has_add_permission(self, request):
        return False  # runs start from start_round / start_generate (the Training page, the API)

    def has_delete_permission(self, request, obj=None):
        return obj is None or obj.finished  # cancel first: a deleted running run would leave its engine running


@admin.action(description="Make the selected version active (a rollback; refused while a round runs)",
              permissions=["change"])
def make_active(modeladmin, request, queryset):
    versions = list(queryset.select_related("project"))
    if len({(v.project_id, v.kind) for v in versions}) != len(versions):
        modeladmin.message_user(request, "Select at most one version of each kind per project.", messages.ERROR)
        return
    for version in versions:
        try:
            activate_version(version)
        except LoopError as exc:
            modeladmin.message_user(request, exc.message, messages.ERROR)
        else:
            modeladmin.message_user(request, f"{version.label} is now the active {version.kind}.", messages.SUCCESS)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["label", "project", "kind", "active", "parent", "reward_model", "created_at"]
    list_filter = ["project", "kind", "active"]
    actions = [make_active]

    def get_readonly_fields(self, request, obj=None):
        return _fields(ModelVersion)

    def has_add_permission(self, request):
        return False  # versions are registered by rounds

    def has_delete_permission(self, request, obj=None):
        return obj is None or not obj.active  # make another version active first


class LoopSettingsForm(GateSettingsForm):
    """Everything a project's loop settings hold: the automatic trigger, the saved round parameters, and the
    held-out evaluation and promotion gate (the gate fields as the training page shows them)."""

    class Meta(GateSettingsForm.Meta):
        fields = ["project", "auto_round_pairs", "round_params", *GateSettingsForm.Meta.fields]

    def clean_round_params(self):
        """Validated as ``loop_settings_set`` does, so an automatic round never fails on its parameters."""
        params = self.cleaned_data["round_params"] or {}
        if not isinstance(params, dict):
            raise forms.ValidationError('round parameters are a JSON object, e.g. {"policy_steps": 40}')
        try:
            return validate_round_params(params)
        except LoopError as exc:
            raise forms.ValidationError(exc.message) from None


@admin.register(LoopSettings)
class LoopSettingsAdmin(admin.ModelAdmin):
    form = LoopSettingsForm
    list_display = ["project", "auto_round_pairs"]
