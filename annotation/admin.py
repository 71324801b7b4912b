from django.contrib import admin

from annotation import models


class MembershipInline(admin.TabularInline):
    model = models.Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "task_type", "candidates_per_task", "overlap", "lease_minutes", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["project", "user", "role", "created_at"]
    list_filter = ["role", "project"]
    autocomplete_fields = ["user", "project"]


@admin.register(models.Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["sha256", "format", "width", "height", "size_bytes", "created_at"]
    search_fields = ["sha256"]


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "split", "text", "external_id"]
    list_filter = ["project", "split"]
    search_fields = ["text", "external_id"]
    raw_id_fields = ["image"]


@admin.register(models.Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "source", "text"]
    list_filter = ["source"]
    search_fields = ["text"]
    raw_id_fields = ["prompt"]


@admin.register(models.RankingTask)
class RankingTaskAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "state", "priority", "completed_count", "leased_count", "required_annotations"]
    list_filter = ["project", "state"]
    raw_id_fields = ["prompt"]
    readonly_fields = ["leased_count", "completed_count"]


@admin.register(models.Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "state", "leased_at", "expires_at"]
    list_filter = ["state", "project"]
    raw_id_fields = ["task"]


@admin.register(models.Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "task", "annotator", "flag_all_bad", "flag_unsafe", "flag_image_unclear", "created_at"]
    list_filter = ["project", "flag_all_bad", "flag_unsafe", "flag_image_unclear"]
    raw_id_fields = ["task"]


@admin.register(models.PreferencePair)
class PreferencePairAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "chosen", "rejected", "margin", "created_at"]
    list_filter = ["project"]
    raw_id_fields = ["ranking", "prompt", "chosen", "rejected"]
