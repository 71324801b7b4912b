from django.contrib import admin

from rlhf.models import LoopSettings, ModelVersion, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "state", "round", "step", "total_steps", "created_at", "finished_at"]
    list_filter = ["project", "kind", "state"]
    readonly_fields = ["metrics", "result", "log_tail", "error", "snapshot", "heartbeat_at", "pid", "job_id"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["label", "project", "kind", "active", "parent", "reward_model", "created_at"]
    list_filter = ["project", "kind", "active"]


@admin.register(LoopSettings)
class LoopSettingsAdmin(admin.ModelAdmin):
    list_display = ["project", "auto_round_pairs"]
